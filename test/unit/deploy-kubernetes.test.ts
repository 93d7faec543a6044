// The Kubernetes manifests under deploy/kubernetes (and deploy/kubernetes/unpin): every object valid
// against the Kubernetes and Prometheus Operator schemas (kubernetes-models), no field those schemas do
// not know, and the policy the DaemonSets promise (not privileged, least capabilities, one writable host
// path for the pinned state, an init container with CAP_CHOWN only, probes, resources, ...). The schema
// and unknown-field checks are shared with the Helm chart's tests: k8s-checks.ts.

import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, readdirSync } from 'node:fs'

import { PodMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor'
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor'
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet'
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap'
import { Namespace } from 'kubernetes-models/v1/Namespace'
import { Service } from 'kubernetes-models/v1/Service'
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount'
import { parse as parseYaml } from 'yaml'

import { parseConfig, type Config } from '../../src/config/config.js'
import { parseRunArgs } from '../../src/cli/run.js'
import { DEFAULT_PIN_PATH } from '../../src/kernel/pinned-state.js'
import {
  matches,
  nulls,
  objectChecks,
  parseManifests,
  pointer,
  quantity,
  schemaErrors,
  unknownFields,
  withValueAt,
  type Manifest,
  type PathItem,
} from './k8s-checks.js'

const DIR = new URL('../../deploy/kubernetes/', import.meta.url)
/** The one-off DaemonSet that unpins the kernel state from every node after the exporter is gone. */
const UNPIN_DIR = new URL('unpin/', DIR)
const NAMESPACE = 'tcptracer-exporter'
const JOB = 'tcptracer'
const CAPABILITIES = ['BPF', 'DAC_READ_SEARCH', 'PERFMON', 'SYS_PTRACE']
const MONITOR_FILES = ['podmonitor.yaml', 'servicemonitor.yaml']

function yamlFiles(dir: URL = DIR): string[] {
  return readdirSync(dir)
    .filter((f) => /\.ya?ml$/.test(f))
    .sort()
}

/** Every document of every YAML file of dir, kustomization.yaml included; YAML errors and warnings fail. */
function loadAll(dir: URL = DIR, prefix = ''): Manifest[] {
  return yamlFiles(dir).flatMap((name) =>
    parseManifests(readFileSync(new URL(name, dir), 'utf8'), `${prefix}${name}`),
  )
}

const manifests = loadAll()
const objects = manifests.filter((m) => m.doc['kind'] !== 'Kustomization')
const unpinManifests = loadAll(UNPIN_DIR, 'unpin/')

/** The one object of this kind; fails unless there is exactly one. */
function only<T>(kind: string, Model: new (data: never) => T): T {
  const found = objects.filter((m) => m.doc['kind'] === kind)
  assert.equal(found.length, 1, `expected exactly one ${kind}, found ${found.length}`)
  return new Model(found[0]?.doc as never)
}

/** Plain data for comparing configs: each RegExp as its source and flags. */
function plain(c: Config): unknown {
  return JSON.parse(
    JSON.stringify(c, (_k, v: unknown) => (v instanceof RegExp ? `/${v.source}/${v.flags}` : v)),
  )
}

describe('deploy/kubernetes: schemas', () => {
  test('there are manifests, each a Kubernetes object or the kustomization', () => {
    assert.ok(objects.length >= 7, `only ${objects.length} objects`)
    assert.deepEqual(
      unpinManifests.map((m) => `${m.where}: ${String(m.doc['kind'])}`),
      ['unpin/daemonset.yaml: DaemonSet'],
    )
    for (const { where, doc } of [...manifests, ...unpinManifests]) {
      assert.equal(typeof doc['apiVersion'], 'string', `${where}: apiVersion`)
      assert.equal(typeof doc['kind'], 'string', `${where}: kind`)
    }
  })

  objectChecks([...objects, ...unpinManifests], NAMESPACE)

  test('the checks catch a wrong type, and unknownFields a misspelt field', () => {
    const ds = objects.find((m) => m.doc['kind'] === 'DaemonSet')?.doc
    assert.ok(ds)
    const containerAt: PathItem[] = ['spec', 'template', 'spec', 'containers', 0]
    const portAt = [...containerAt, 'ports', 0, 'containerPort']

    const wrongType = withValueAt(ds, portAt, 'abc')
    assert.throws(() => new DaemonSet(wrongType as never).validate(), /containerPort must be integer/)
    assert.deepEqual(
      schemaErrors(DaemonSet, wrongType).map((e) => e.instancePath),
      [pointer(portAt)],
    )

    // kubernetes-models alone accepts a misspelt field...
    const container = withValueAt(ds, [...containerAt, 'readinesProbe'], { httpGet: { path: '/readyz' } })
    assert.doesNotThrow(() => new DaemonSet(container as never).validate())
    // ...which unknownFields reports, at any depth
    assert.deepEqual(unknownFields(DaemonSet, container), [pointer([...containerAt, 'readinesProbe'])])
    const deep = withValueAt(ds, [...containerAt, 'securityContext', 'runAsNonroot'], true)
    assert.deepEqual(unknownFields(DaemonSet, deep), [
      pointer([...containerAt, 'securityContext', 'runAsNonroot']),
    ])

    const pm = objects.find((m) => m.doc['kind'] === 'PodMonitor')?.doc
    assert.ok(pm)
    const relabel = withValueAt(pm, ['spec', 'podMetricsEndpoints', 0, 'relabellings'], [])
    assert.doesNotThrow(() => new PodMonitor(relabel as never).validate())
    assert.deepEqual(unknownFields(PodMonitor, relabel), ['/spec/podMetricsEndpoints/0/relabellings'])
    const action = withValueAt(pm, ['spec', 'podMetricsEndpoints', 0, 'relabelings', 0, 'action'], 'rename')
    assert.throws(() => new PodMonitor(action as never).validate(), /action must be equal to one of/)

    // and nulls are found
    assert.deepEqual(nulls(withValueAt(ds, ['spec', 'template', 'spec', 'hostPID'], null)), [
      '/spec/template/spec/hostPID',
    ])
  })
})

describe('deploy/kubernetes: policy', () => {
  const ds = only('DaemonSet', DaemonSet)
  const pod = ds.spec?.template.spec
  const container = pod?.containers.find((c) => c.name === 'tcptracer-exporter')
  const sc = container?.securityContext
  const podLabels = ds.spec?.template.metadata?.labels
  const init = pod?.initContainers?.find((c) => c.name === 'bpf-state-owner')
  const initSc = init?.securityContext
  // the pinned state: the host's pin directory, and where the exporter mounts it
  const pinVolume = pod?.volumes?.find((v) => v.hostPath?.path === DEFAULT_PIN_PATH)
  const pinMount = container?.volumeMounts?.find((m) => m.name === pinVolume?.name)

  test('the DaemonSet runs one exporter container, after one init container that owns the pin directory', () => {
    assert.ok(pod && container && sc && init && initSc)
    assert.equal(pod.containers.length, 1)
    assert.deepEqual(
      pod.initContainers?.map((c) => c.name),
      ['bpf-state-owner'],
    )
    matches(ds.spec?.selector.matchLabels, podLabels)
  })

  test('the image is the package version (OWNER is a placeholder to replace)', () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version: string
    }
    assert.equal(container?.image, `ghcr.io/OWNER/tcptracer-exporter:${pkg.version}`)
    assert.equal(init?.image, container?.image, 'the init container runs the same image')
    assert.equal(init?.imagePullPolicy, container?.imagePullPolicy)
    assert.equal(ds.metadata?.labels?.['app.kubernetes.io/version'], pkg.version)
    assert.equal(podLabels?.['app.kubernetes.io/version'], pkg.version)
  })

  test('not privileged: non-root, no escalation, read-only root, seccomp and AppArmor named', () => {
    assert.equal(sc?.privileged, false)
    assert.equal(sc?.runAsNonRoot ?? pod?.securityContext?.runAsNonRoot, true)
    assert.equal(sc?.runAsUser ?? pod?.securityContext?.runAsUser, 10001)
    assert.equal(sc?.allowPrivilegeEscalation, false)
    assert.equal(sc?.readOnlyRootFilesystem, true)
    // RuntimeDefault may refuse bpf(): Unconfined or a Localhost profile that allows it
    assert.ok(['Unconfined', 'Localhost'].includes(sc?.seccompProfile?.type ?? ''), 'seccompProfile')
    assert.ok(['Unconfined', 'Localhost'].includes(sc?.appArmorProfile?.type ?? ''), 'appArmorProfile')
    assert.equal(pod?.hostNetwork ?? false, false)
    assert.equal(pod?.hostIPC ?? false, false)
    // root only in the init container: not at the pod level, not in the exporter
    assert.equal(pod?.securityContext?.runAsUser, undefined)
    assert.equal(pod?.securityContext?.runAsGroup, undefined)
    assert.deepEqual(
      [...(pod?.initContainers ?? []), ...(pod?.containers ?? [])]
        .filter((c) => c.securityContext?.runAsUser === 0)
        .map((c) => c.name),
      ['bpf-state-owner'],
    )
  })

  test('the init container: root with CAP_CHOWN only, no escalation, read-only root, only the pin directory', () => {
    assert.equal(initSc?.privileged ?? false, false)
    assert.equal(initSc?.runAsUser, 0)
    assert.equal(initSc?.runAsGroup, 0)
    assert.equal(initSc?.runAsNonRoot, false)
    assert.equal(initSc?.allowPrivilegeEscalation, false)
    assert.equal(initSc?.readOnlyRootFilesystem, true)
    assert.deepEqual(initSc?.capabilities?.drop, ['ALL'])
    assert.deepEqual(initSc?.capabilities?.add, ['CHOWN'])
    // chown and chmod need no exemption from the runtime's profiles
    assert.equal(initSc?.seccompProfile?.type, 'RuntimeDefault')
    assert.equal(initSc?.appArmorProfile?.type, 'RuntimeDefault')
    assert.equal(pod?.shareProcessNamespace ?? false, false)
    // its one mount: the pin directory, where the exporter mounts it
    assert.ok(pinMount, 'the exporter mounts the pin directory')
    assert.deepEqual(
      (init?.volumeMounts ?? []).map((m) => [m.name, m.mountPath, m.readOnly ?? false, m.subPath]),
      [[pinVolume?.name, pinMount.mountPath, false, undefined]],
    )
    assert.equal(init?.env, undefined)
    assert.equal(init?.envFrom, undefined)
    // the command: that directory becomes the exporter's user's, mode 0700, whoever owned it (the
    // kubelet creates it root's, 0755; a previous pod leaves it the exporter's). Chown to root first:
    // root without CAP_FOWNER may chmod only its own files (test/privileged/deploy/kubernetes.test.ts runs it)
    assert.equal(init?.args, undefined)
    assert.deepEqual(init?.command, [
      '/bin/sh',
      '-ec',
      `chown 0:0 "$1" && chmod 0700 "$1" && chown ${sc?.runAsUser}:${sc?.runAsGroup} "$1"`,
      'sh',
      pinMount.mountPath,
    ])
  })

  test('capabilities: drops ALL, adds exactly BPF, PERFMON, SYS_PTRACE and DAC_READ_SEARCH', () => {
    assert.deepEqual(sc?.capabilities?.drop, ['ALL'])
    assert.deepEqual([...(sc?.capabilities?.add ?? [])].sort(), CAPABILITIES)
  })

  test("the added capabilities are exactly the image's file capabilities on node", () => {
    // With one granted but not the other way round, node fails to exec (or holds fewer than it needs).
    const dockerfile = readFileSync(new URL('../../Dockerfile', import.meta.url), 'utf8')
    const setcap = /\bsetcap\s+'?([a-z_,]+)[=+]ep\b/.exec(dockerfile)
    assert.ok(setcap?.[1], 'the Dockerfile gives node file capabilities with setcap')
    const fileCaps = setcap[1].split(',').map((c) => c.replace(/^cap_/, '').toUpperCase())
    assert.deepEqual(fileCaps.sort(), [...(sc?.capabilities?.add ?? [])].sort())
  })

  test('hostPID, every toleration, no API token', () => {
    assert.equal(pod?.hostPID, true)
    assert.ok(
      pod?.tolerations?.some((t) => t.operator === 'Exists' && t.key === undefined && t.effect === undefined),
      'a toleration of every taint',
    )
    assert.equal(pod?.automountServiceAccountToken, false)
    const sa = only('ServiceAccount', ServiceAccount)
    assert.equal(pod?.serviceAccountName, sa.metadata?.name)
    assert.equal(sa.automountServiceAccountToken, false)
  })

  test('rolling update, 10% at a time, 30 s to stop', () => {
    assert.equal(ds.spec?.updateStrategy?.type, 'RollingUpdate')
    assert.equal(ds.spec?.updateStrategy?.rollingUpdate?.maxUnavailable, '10%')
    assert.equal(pod?.terminationGracePeriodSeconds, 30)
  })

  test('args parse with the daemon parser, and listen on the named container port', () => {
    const args = container?.args ?? []
    assert.equal(args[0], 'run')
    const run = parseRunArgs(args.slice(1))
    assert.equal(run.configFile, '/etc/tcptracer-exporter/config.yaml')
    assert.equal(run.listenAddress, ':19427')
    assert.equal(container?.command, undefined, 'keeps the image entrypoint')
    const port = container?.ports?.find((p) => p.name === 'metrics')
    assert.ok(port, 'a port named metrics')
    assert.equal(port.containerPort, run.port)
    assert.equal(port.protocol ?? 'TCP', 'TCP')
    for (const e of container?.env ?? []) {
      if (e.name === 'NODE_OPTIONS') assert.equal(e.value ?? '', '', 'NODE_OPTIONS must stay empty')
    }
  })

  test('probes: startup and liveness on /healthz, readiness on /readyz, all on the metrics port', () => {
    const probes = [
      [container?.livenessProbe, '/healthz'],
      [container?.readinessProbe, '/readyz'],
      ...(container?.startupProbe ? [[container.startupProbe, '/healthz'] as const] : []),
    ] as const
    for (const [probe, path] of probes) {
      assert.ok(probe?.httpGet, `${path}: an httpGet probe`)
      assert.equal(probe.httpGet.path, path)
      assert.equal(probe.httpGet.port, 'metrics')
      assert.ok(
        (probe.timeoutSeconds ?? 1) >= 1 && (probe.periodSeconds ?? 10) >= (probe.timeoutSeconds ?? 1),
      )
    }
  })

  test('resources: requests and limits for cpu and memory, requests within limits', () => {
    for (const c of [container, init]) {
      const { requests, limits } = c?.resources ?? {}
      for (const r of ['cpu', 'memory']) {
        const request = quantity(requests?.[r])
        const limit = quantity(limits?.[r])
        assert.ok(request > 0 && request <= limit, `${c?.name}: ${r}: request ${request} limit ${limit}`)
      }
    }
  })

  test('volumes: the config at its flag path, host paths read-only but the pin directory', () => {
    const mounts = container?.volumeMounts ?? []
    const writable: string[] = []
    for (const v of pod?.volumes ?? []) {
      const vm = mounts.filter((m) => m.name === v.name)
      assert.ok(vm.length > 0, `volume ${v.name} is mounted`)
      if (v.hostPath) for (const m of vm) if (m.readOnly !== true) writable.push(v.hostPath.path)
    }
    assert.deepEqual(writable, [DEFAULT_PIN_PATH], 'one host path is writable: the pin directory')
    // the kubelet creates it before any container runs (the init container then gives it away)
    assert.equal(pinVolume?.hostPath?.type, 'DirectoryOrCreate')
    assert.ok(pinMount)
    assert.equal(parseRunArgs(container?.args?.slice(1) ?? []).pinPath, pinMount.mountPath, '--bpf.pin-path')
    // the runtime cannot create a mount point in the container's own sysfs (or its /proc or /dev)
    assert.ok(!/^\/(sys|proc|dev)(\/|$)/.test(pinMount.mountPath), `${pinMount.mountPath} is outside /sys`)
    assert.equal(pinMount.subPath, undefined)
    assert.equal(pinMount.mountPropagation ?? 'None', 'None')
    const configVolume = pod?.volumes?.find((v) => v.configMap !== undefined)
    const cm = only('ConfigMap', ConfigMap)
    assert.equal(configVolume?.configMap?.name, cm.metadata?.name)
    const configMount = mounts.find((m) => m.name === configVolume?.name)
    assert.equal(configMount?.mountPath, '/etc/tcptracer-exporter')
    assert.equal(configMount?.subPath, undefined, 'a directory mount, so that edits reach the pod')
    const hostPaths = Object.fromEntries(
      mounts.flatMap((m) => {
        const hp = pod?.volumes?.find((v) => v.name === m.name)?.hostPath
        return hp ? [[hp.path, m]] : []
      }),
    )
    assert.equal(hostPaths['/sys/fs/cgroup']?.mountPath, '/sys/fs/cgroup')
    assert.equal(hostPaths['/run/netns']?.mountPath, '/run/netns')
    assert.equal(hostPaths['/run/netns']?.mountPropagation, 'HostToContainer')
  })

  test("the ConfigMap's config.yaml parses with our parser and is config.example.yml's defaults", () => {
    const text = only('ConfigMap', ConfigMap).data?.['config.yaml']
    assert.ok(text, 'config.yaml key')
    const example = readFileSync(new URL('../../config.example.yml', import.meta.url), 'utf8')
    assert.deepEqual(
      plain(parseConfig(text, 'configmap.yaml')),
      plain(parseConfig(example, 'config.example.yml')),
    )
  })

  test('the namespace admits the pods (Pod Security "privileged")', () => {
    const ns = only('Namespace', Namespace)
    assert.equal(ns.metadata?.labels?.['pod-security.kubernetes.io/enforce'], 'privileged')
  })

  test('the headless Service selects the pods and exposes the metrics port', () => {
    const svc = only('Service', Service)
    assert.equal(svc.spec?.clusterIP, 'None')
    matches(svc.spec?.selector, podLabels)
    const port = svc.spec?.ports?.find((p) => p.name === 'metrics')
    assert.equal(port?.port, 19427)
    assert.ok(port.targetPort === 'metrics' || port.targetPort === 19427)
  })

  /** The relabelings leave job="tcptracer" and add node from the pod's node name. */
  function checkRelabelings(
    relabelings: ReadonlyArray<{
      action?: string
      sourceLabels?: string[]
      targetLabel?: string
      replacement?: string
      regex?: string
    }>,
  ) {
    // the operator sets job first, then applies these in order: the last one writing job must write ours
    const job = relabelings.filter((r) => r.targetLabel === 'job').at(-1)
    assert.ok(job, 'a relabeling that sets job')
    assert.equal(job.action ?? 'replace', 'replace')
    assert.equal(job.sourceLabels, undefined)
    assert.equal(job.regex ?? '(.*)', '(.*)')
    assert.equal(job.replacement, JOB)
    const node = relabelings.find((r) => r.targetLabel === 'node')
    assert.equal(node?.action ?? 'replace', 'replace')
    assert.deepEqual(node?.sourceLabels, ['__meta_kubernetes_pod_node_name'])
  }

  test('the PodMonitor selects the pods, scrapes port metrics, and labels job and node', () => {
    const pm = only('PodMonitor', PodMonitor)
    assert.equal(pm.metadata?.namespace, ds.metadata?.namespace)
    matches(pm.spec.selector.matchLabels, podLabels)
    assert.equal(pm.spec.podMetricsEndpoints?.length, 1)
    const ep = pm.spec.podMetricsEndpoints?.[0]
    assert.equal(ep?.port, 'metrics')
    assert.equal(ep.path ?? '/metrics', '/metrics')
    assert.equal(pm.spec.jobLabel, undefined, 'job comes from the relabelings')
    checkRelabelings(ep.relabelings ?? [])
  })

  test('the ServiceMonitor selects the Service, scrapes port metrics, and labels job and node', () => {
    const sm = only('ServiceMonitor', ServiceMonitor)
    const svc = only('Service', Service)
    assert.equal(sm.metadata?.namespace, svc.metadata?.namespace)
    matches(sm.spec.selector.matchLabels, svc.metadata?.labels)
    assert.equal(sm.spec.endpoints?.length, 1)
    const ep = sm.spec.endpoints?.[0]
    assert.equal(ep?.port, 'metrics')
    assert.equal(ep.path ?? '/metrics', '/metrics')
    assert.equal(sm.spec.jobLabel, undefined, 'job comes from the relabelings')
    checkRelabelings(ep.relabelings ?? [])
  })

  test('kustomization.yaml lists every file, with exactly one of the two monitors enabled', () => {
    const text = readFileSync(new URL('kustomization.yaml', DIR), 'utf8')
    const k = parseYaml(text) as { apiVersion?: string; kind?: string; resources?: string[] }
    assert.equal(k.apiVersion, 'kustomize.config.k8s.io/v1beta1')
    assert.equal(k.kind, 'Kustomization')
    const resources = k.resources ?? []
    assert.equal(new Set(resources).size, resources.length, 'no duplicates')
    const enabled = MONITOR_FILES.filter((f) => resources.includes(f))
    assert.equal(enabled.length, 1, `exactly one monitor enabled, got ${JSON.stringify(enabled)}`)
    // the other one is listed as the commented-out alternative
    const alternative = MONITOR_FILES.find((f) => !resources.includes(f)) ?? ''
    assert.match(text, new RegExp(`^\\s*#\\s*- ${alternative.replace('.', '\\.')}\\b`, 'm'))
    const files = yamlFiles().filter((f) => f !== 'kustomization.yaml')
    assert.deepEqual([...resources, alternative].sort(), files)
    // each manifest file holds what it is named after
    for (const { file, doc } of objects) {
      assert.equal(
        file,
        `${String(doc['kind']).toLowerCase()}.yaml`,
        `${file} holds a ${String(doc['kind'])}`,
      )
    }
  })
})

describe('deploy/kubernetes/unpin: policy', () => {
  const ds = only('DaemonSet', DaemonSet)
  const exporterPod = ds.spec?.template.spec
  const exporter = exporterPod?.containers.find((c) => c.name === 'tcptracer-exporter')
  const exporterPin = exporterPod?.volumes?.find((v) => v.hostPath?.path === DEFAULT_PIN_PATH)
  const exporterPinMount = exporter?.volumeMounts?.find((m) => m.name === exporterPin?.name)
  const u = new DaemonSet(unpinManifests[0]?.doc as never)
  const pod = u.spec?.template.spec
  const unpin = pod?.initContainers?.find((c) => c.name === 'unpin')
  const done = pod?.containers.find((c) => c.name === 'done')
  const labels = u.spec?.template.metadata?.labels

  test('one init container that unpins and one that idles, on every node the exporter runs on', () => {
    assert.ok(pod && unpin && done)
    assert.deepEqual(
      pod.initContainers?.map((c) => c.name),
      ['unpin'],
    )
    assert.deepEqual(
      pod.containers.map((c) => c.name),
      ['done'],
    )
    assert.equal(u.metadata?.namespace, ds.metadata?.namespace)
    matches(u.spec?.selector.matchLabels, labels)
    assert.deepEqual(pod.tolerations, exporterPod?.tolerations)
    assert.deepEqual(pod.nodeSelector, exporterPod?.nodeSelector)
    assert.equal(pod.automountServiceAccountToken, false)
    assert.equal(pod.hostPID ?? false, false)
    assert.equal(pod.hostNetwork ?? false, false)
    // the exporter's Service, monitors and DaemonSet must not take these pods for exporters
    const selectors = [
      ds.spec?.selector.matchLabels,
      only('Service', Service).spec?.selector,
      only('PodMonitor', PodMonitor).spec.selector.matchLabels,
      only('ServiceMonitor', ServiceMonitor).spec.selector.matchLabels,
    ]
    for (const sel of selectors) {
      assert.ok(
        Object.entries(sel ?? {}).some(([k, v]) => labels?.[k] !== v),
        `${JSON.stringify(sel)} selects the unpin pods`,
      )
    }
  })

  test("runs `tcptracer-exporter unpin` on the exporter's pin directory, from the exporter's image", () => {
    assert.equal(unpin?.image, exporter?.image)
    assert.equal(done?.image, exporter?.image)
    assert.equal(unpin?.command, undefined, 'the image entrypoint')
    const hostPaths = (pod?.volumes ?? []).filter((v) => v.hostPath)
    assert.equal(hostPaths.length, 1, 'one host path')
    const vol = hostPaths[0]
    assert.equal(vol?.hostPath?.path, exporterPin?.hostPath?.path)
    // a node the exporter never ran on gets an empty directory, so that the pod starts and the rollout ends
    assert.equal(vol?.hostPath?.type, 'DirectoryOrCreate')
    const mount = unpin?.volumeMounts?.find((m) => m.name === vol?.name)
    assert.ok(mount, 'unpin mounts it')
    assert.equal(mount.readOnly ?? false, false)
    assert.equal(mount.mountPath, exporterPinMount?.mountPath)
    assert.deepEqual(unpin?.args, ['unpin', `--bpf.pin-path=${mount.mountPath}`])
    assert.deepEqual(done?.volumeMounts ?? [], [], 'the idle container mounts nothing')
    // it exits at once on SIGTERM (a shell as PID 1 ignores it unless trapped)
    assert.deepEqual(done?.command?.slice(0, 2), ['/bin/sh', '-c'])
    assert.match(done?.command?.[2] ?? '', /^trap 'exit 0' TERM; /)
  })

  test("as the exporter's user: no escalation, read-only root; node's file capabilities for unpin, none for the idle container", () => {
    for (const c of [unpin, done]) {
      const csc = c?.securityContext
      assert.equal(csc?.privileged ?? false, false, `${c?.name}`)
      assert.equal(csc?.runAsNonRoot, true, `${c?.name}`)
      assert.equal(csc?.runAsUser, exporter?.securityContext?.runAsUser, `${c?.name}`)
      assert.equal(csc?.runAsGroup, exporter?.securityContext?.runAsGroup, `${c?.name}`)
      assert.equal(csc?.allowPrivilegeEscalation, false, `${c?.name}`)
      assert.equal(csc?.readOnlyRootFilesystem, true, `${c?.name}`)
      assert.deepEqual(csc?.capabilities?.drop, ['ALL'], `${c?.name}`)
      assert.equal(csc?.seccompProfile?.type, 'RuntimeDefault', `${c?.name}`)
      const { requests, limits } = c?.resources ?? {}
      for (const r of ['cpu', 'memory']) {
        const request = quantity(requests?.[r])
        assert.ok(request > 0 && request <= quantity(limits?.[r]), `${c?.name}: ${r}`)
      }
    }
    assert.equal(pod?.securityContext?.runAsUser, undefined)
    // node cannot even be executed without the four it carries (see the exporter's policy above)
    assert.deepEqual([...(unpin?.securityContext?.capabilities?.add ?? [])].sort(), CAPABILITIES)
    assert.equal(done?.securityContext?.capabilities?.add, undefined)
    for (const e of unpin?.env ?? []) {
      if (e.name === 'NODE_OPTIONS') assert.equal(e.value ?? '', '', 'NODE_OPTIONS must stay empty')
    }
  })
})
