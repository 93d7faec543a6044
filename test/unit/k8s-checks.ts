// Checks shared by the tests of the Kubernetes objects we ship: the plain manifests of deploy/kubernetes
// (deploy-kubernetes.test.ts) and what the Helm chart and kustomize render (deploy-helm.test.ts).
//
// kubernetes-models checks types, required fields, enums, formats (quantities) and the CRDs' patterns,
// but its schemas do not forbid additional properties: a misspelt field (`readinesProbe`) validates, and
// the API server would drop it with at most a warning. unknownFields() closes that gap by probing: a field
// the schema knows fails validation at its own path once given a value of the wrong type; an unknown one
// does not. It also lets nulls (`key:` with no value) and out-of-range integers through, hence nulls().

import { describe, test } from 'node:test'
import assert from 'node:assert/strict'

import { PodMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor'
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor'
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet'
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap'
import { Namespace } from 'kubernetes-models/v1/Namespace'
import { Service } from 'kubernetes-models/v1/Service'
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount'
import { parseAllDocuments } from 'yaml'

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json }
export type JsonObject = { [key: string]: Json }
export type PathItem = string | number

/** What the model classes have in common: built from plain data, validate() throws on a schema error. */
export type ModelClass = new (data: never) => { validate(): void }

export const MODELS: Record<string, ModelClass> = {
  'v1/Namespace': Namespace,
  'v1/ServiceAccount': ServiceAccount,
  'v1/ConfigMap': ConfigMap,
  'v1/Service': Service,
  'apps/v1/DaemonSet': DaemonSet,
  'monitoring.coreos.com/v1/PodMonitor': PodMonitor,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
}

export interface Manifest {
  /** file name, plus the document's index when the file holds several */
  where: string
  file: string
  doc: JsonObject
}

export function isObject(v: Json | undefined): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Every document of a YAML stream, each a mapping; YAML errors and warnings (duplicate keys too) fail. */
export function parseManifests(text: string, file: string): Manifest[] {
  const docs = parseAllDocuments(text, { uniqueKeys: true, strict: true })
  assert.ok(Array.isArray(docs), `${file}: not a YAML stream`)
  return docs.map((d, i) => {
    const where = docs.length > 1 ? `${file}#${i}` : file
    assert.deepEqual([...d.errors, ...d.warnings].map(String), [], `${where}: YAML problems`)
    const doc = d.toJS() as Json
    assert.ok(isObject(doc), `${where}: expected a mapping, got ${JSON.stringify(doc)}`)
    return { where, file, doc }
  })
}

export function modelFor(doc: JsonObject): ModelClass {
  const key = `${String(doc['apiVersion'])}/${String(doc['kind'])}`
  const Model = MODELS[key]
  assert.ok(Model, `no schema for ${key}: add its kubernetes-models class to MODELS`)
  return Model
}

/** The schema errors of `doc` (an empty list when it is valid). */
export function schemaErrors(
  Model: ModelClass,
  doc: Json,
): Array<{ instancePath: string; message?: string }> {
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
export function pointer(path: readonly PathItem[]): string {
  return path.map((p) => `/${String(p).replaceAll('~', '~0').replaceAll('/', '~1')}`).join('')
}

export function withValueAt(doc: JsonObject, path: readonly PathItem[], value: Json): JsonObject {
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
export function unknownFields(Model: ModelClass, doc: JsonObject): string[] {
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
export function nulls(value: Json, path: PathItem[] = []): string[] {
  if (value === null) return [pointer(path)]
  if (Array.isArray(value)) return value.flatMap((v, i) => nulls(v, [...path, i]))
  if (isObject(value)) return Object.entries(value).flatMap(([k, v]) => nulls(v, [...path, k]))
  return []
}

/** `selector` matches `labels`. */
export function matches(
  selector: Record<string, string> | undefined,
  labels: Record<string, string> | undefined,
) {
  assert.ok(selector && Object.keys(selector).length > 0, 'empty selector: it would select everything')
  for (const [k, v] of Object.entries(selector)) {
    assert.equal(labels?.[k], v, `label ${k}=${v} selected but not set (labels: ${JSON.stringify(labels)})`)
  }
}

/** Bytes or cores of a Kubernetes quantity, for the suffixes used here. */
export function quantity(q: string | number | undefined): number {
  assert.ok(q !== undefined, 'quantity missing')
  const m = /^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|k|M|G)?$/.exec(String(q))
  assert.ok(m, `unsupported quantity ${String(q)}`)
  const scale = { m: 1e-3, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, k: 1e3, M: 1e6, G: 1e9 }
  return Number(m[1]) * (m[2] === undefined ? 1 : scale[m[2] as keyof typeof scale])
}

/**
 * The tests every object gets, one suite per object: valid against its schema, no field the schema does
 * not know, no null, a valid name, and in `namespace` (a Namespace: named `namespace`).
 */
export function objectChecks(manifests: readonly Manifest[], namespace: string): void {
  for (const { where, doc } of manifests) {
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
        if (doc['kind'] === 'Namespace') assert.equal(meta['name'], namespace)
        else assert.equal(meta['namespace'], namespace)
      })
    })
  }
}
