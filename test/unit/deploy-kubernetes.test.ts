// The Kubernetes manifests under deploy/kubernetes (and deploy/kubernetes/unpin): every object valid
// against the Kubernetes and Prometheus Operator schemas (kubernetes-models), no field those schemas do
// not know, and the policy the DaemonSets promise (not privileged, least capabilities, one writable host
// path for the pinned state, an init container with CAP_CHOWN only, probes, resources, ...).
//
// kubernetes-models checks types, required fields, enums, formats (quantities) and the CRDs' patterns,
// but its schemas do not forbid additional properties: a misspelt field (`readinesProbe`) validates, and
// the API server would drop it with at most a warning. unknownFields() closes that gap by probing: a field
// the schema knows fails validation at its own path once given a value of the wrong type; an unknown one
// does not. It also lets nulls (`key:` with no value) and out-of-range integers through, hence the checks
// for those below.

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
import { parse as parseYaml, parseAllDocuments } from 'yaml'

import { parseConfig, type Config } from '../../src/config.js'
import { parseRunArgs } from '../../src/daemon.js'
import { DEFAULT_PIN_PATH } from '../../src/state.js'

const DIR = new URL('../../deploy/kubernetes/', import.meta.url)
/** The one-off DaemonSet that unpins the kernel state from every node after the exporter is gone. */
const UNPIN_DIR = new URL('unpin/', DIR)
const NAMESPACE = 'tcptracer-exporter'
const JOB = 'tcptracer'
const CAPABILITIES = ['BPF', 'DAC_READ_SEARCH', 'PERFMON', 'SYS_PTRACE']
const MONITOR_FILES = ['podmonitor.yaml', 'servicemonitor.yaml']

type Json = null | boolean | number | string | Json[] | { [key: string]: Json }
type JsonObject = { [key: string]: Json }
type PathItem = string | number

/** What the model classes have in common: built from plain data, validate() throws on a schema error. */
type ModelClass = new (data: never) => { validate(): void }

const MODELS: Record<string, ModelClass> = {
  'v1/Namespace': Namespace,
  'v1/ServiceAccount': ServiceAccount,
  'v1/ConfigMap': ConfigMap,
  'v1/Service': Service,
  'apps/v1/DaemonSet': DaemonSet,
  'monitoring.coreos.com/v1/PodMonitor': PodMonitor,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
}

interface Manifest {
  /** file name, plus the document's index when the file holds several */
  where: string
  file: string
  doc: JsonObject
}

function isObject(v: Json | undefined): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function yamlFiles(dir: URL = DIR): string[] {
  return readdirSync(dir)
    .filter((f) => /\.ya?ml$/.test(f))
    .sort()
}

/** Every document of every YAML file of dir, kustomization.yaml included; YAML errors and warnings fail. */
function loadAll(dir: URL = DIR, prefix = ''): Manifest[] {
  const out: Manifest[] = []
  for (const name of yamlFiles(dir)) {
    const file = `${prefix}${name}`
    const docs = parseAllDocuments(readFileSync(new URL(name, dir), 'utf8'), {
      uniqueKeys: true,
      strict: true,
    })
    assert.ok(Array.isArray(docs), `${file}: not a YAML stream`)
    docs.forEach((d, i) => {
      const where = docs.length > 1 ? `${file}#${i}` : file
      assert.deepEqual([...d.errors, ...d.warnings].map(String), [], `${where}: YAML problems`)
      const doc = d.toJS() as Json
      assert.ok(isObject(doc), `${where}: expected a mapping, got ${JSON.stringify(doc)}`)
      out.push({ where, file, doc })
    })
  }
  return out
}

const manifests = loadAll()
const objects = manifests.filter((m) => m.doc['kind'] !== 'Kustomization')
const unpinManifests = loadAll(UNPIN_DIR, 'unpin/')

function modelFor(doc: JsonObject): ModelClass {
  const key = `${String(doc['apiVersion'])}/${String(doc['kind'])}`
  const Model = MODELS[key]
  assert.ok(Model, `no schema for ${key}: add its kubernetes-models class to MODELS`)
  return Model
}

/** The schema errors of `doc` (an empty list when it is valid). */
function schemaErrors(Model: ModelClass, doc: Json): Array<{ instancePath: string; message?: string }> {
  try {
    new Model(doc as never).validate()
    return []
  } catch (err) {
    const errors = (err as { errors?: unknown }).errors
    if (!Array.isArray(errors)) throw err
    return errors as Array<{ instancePath: string; message?: string }>
  }
}

/** JSON pointer, as ajv's instancePath spells it. */
function pointer(path: readonly PathItem[]): string {
  return path.map((p) => `/${String(p).replaceAll('~', '~0').replaceAll('/', '~1')}`).join('')
}

function withValueAt(doc: JsonObject, path: readonly PathItem[], value: Json): JsonObject {
  const copy = structuredClone(doc)
  let node: Json = copy
  for (const p of path.slice(0, -1)) node = (node as Record<PathItem, Json>)[p] ?? null
  ;(node as Record<PathItem, Json>)[path[path.length - 1] ?? ''] = value
  return copy
}

/**
 * Pointers to the fields of `doc` that its schema does not know. Each field in turn gets a value of
 * another type (a string for a boolean, `true` for anything else); a known field then fails validation at
 * its own path, an unknown one does not. Maps (labels, ConfigMap data) type their values, so their keys
 * count as known. Fields inside an unknown field are not visited. A field whose schema takes any value
 * (x-kubernetes-preserve-unknown-fields) would be reported as unknown: none is used here.
 */
function unknownFields(Model: ModelClass, doc: JsonObject): string[] {
  const unknown: string[] = []
  const visit = (value: Json, path: PathItem[]): void => {
    if (Array.isArray(value)) {
      value.forEach((v, i) => visit(v, [...path, i]))
    } else if (isObject(value)) {
      for (const [key, v] of Object.entries(value)) {
        const at = [...path, key]
        const ptr = pointer(at)
        const probe = withValueAt(doc, at, typeof v === 'boolean' ? 'not a boolean' : true)
        const known = schemaErrors(Model, probe).some(
          (e) => e.instancePath === ptr || e.instancePath.startsWith(`${ptr}/`),
        )
        if (known) visit(v, at)
        else unknown.push(ptr)
      }
    }
  }
  visit(doc, [])
  return unknown
}

/** Pointers to every null in `value`: `key:` without a value, which validates but is never meant. */
function nulls(value: Json, path: PathItem[] = []): string[] {
  if (value === null) return [pointer(path)]
  if (Array.isArray(value)) return value.flatMap((v, i) => nulls(v, [...path, i]))
  if (isObject(value)) return Object.entries(value).flatMap(([k, v]) => nulls(v, [...path, k]))
  return []
}

/** The one object of this kind; fails unless there is exactly one. */
function only<T>(kind: string, Model: new (data: never) => T): T {
  const found = objects.filter((m) => m.doc['kind'] === kind)
  assert.equal(found.length, 1, `expected exactly one ${kind}, found ${found.length}`)
  return new Model(found[0]?.doc as never)
}

/** `selector` matches `labels`. */
function matches(selector: Record<string, string> | undefined, labels: Record<string, string> | undefined) {
  assert.ok(selector && Object.keys(selector).length > 0, 'empty selector: it would select everything')
  for (const [k, v] of Object.entries(selector)) {
    assert.equal(labels?.[k], v, `label ${k}=${v} selected but not set (labels: ${JSON.stringify(labels)})`)
  }
}

/** Bytes or cores of a Kubernetes quantity, for the suffixes used here. */
function quantity(q: string | number | undefined): number {
  assert.ok(q !== undefined, 'quantity missing')
  const m = /^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|k|M|G)?$/.exec(String(q))
  assert.ok(m, `unsupported quantity ${String(q)}`)
  const scale = { m: 1e-3, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, k: 1e3, M: 1e6, G: 1e9 }
  return Number(m[1]) * (m[2] === undefined ? 1 : scale[m[2] as keyof typeof scale])
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

  for (const { where, doc } of [...objects, ...unpinManifests]) {
    describe(`${where}: ${String(doc['kind'])}`, () => {
      test('validates against its schema', () => {
        const Model = modelFor(doc)
        assert.doesNotThrow(() => new Model(doc as never).validate())
      })

      test('has no field its schema does not know', () => {
        assert.deepEqual(unknownFields(modelFor(doc), doc), [])
      })

      test('has no null (empty) values', () => {
        assert.deepEqual(nulls(doc), [])
      })

      test('is named, and in the exporter namespace', () => {
        const meta = doc['metadata']
        assert.ok(isObject(meta), 'metadata')
        assert.match(String(meta['name']), /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/)
        if (doc['kind'] === 'Namespace') assert.equal(meta['name'], NAMESPACE)
        else assert.equal(meta['namespace'], NAMESPACE)
      })
    })
  }

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
    // root without CAP_FOWNER may chmod only its own files (test/privileged/45.kubernetes.test.ts runs it)
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
