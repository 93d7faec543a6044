// SIGHUP: reload the config file, then the web config file, with one helper. A file that cannot be
// read or is invalid keeps the running one; each file's reloads are counted in the Exporter.
import type { ReloadCounter } from '../metrics/self-metrics.js'
import type { HttpState } from '../http/state.js'
import { ConfigError, describeChanges, loadConfig } from '../config/config.js'
import { describeWebChanges, loadWebConfig } from '../config/webconfig.js'
import type { Exporter } from './exporter.js'

export interface ReloadLog {
  info(o: object, msg: string): void
  warn(o: object, msg: string): void
  error(o: object, msg: string): void
}

/** What a reload put in force: the changes, and a warning for each change left for a restart. */
interface Applied {
  changes: string[]
  warnings: Array<[object, string]>
}

/** One file that SIGHUP reloads. */
interface Reloadable {
  /** "config" or "web config", as the log lines name it */
  what: string
  /** bindings of the log lines about it */
  fields: object
  /** Read and validate the file, then put it in force. */
  reload(): Promise<Applied>
  counter: ReloadCounter
}

/** Reload one file: read, validate and apply it, count the result and log it. */
export async function reloadFile(r: Reloadable, log: ReloadLog): Promise<void> {
  try {
    const { changes, warnings } = await r.reload()
    r.counter.record(true)
    log.info(
      { ...r.fields, changes },
      changes.length ? `${r.what} reloaded` : `${r.what} reloaded: no changes`,
    )
    for (const [o, msg] of warnings) log.warn(o, msg)
  } catch (e) {
    r.counter.record(false)
    if (e instanceof ConfigError) {
      log.error(
        { file: e.file, problems: e.problems },
        `${r.what} reload failed, keeping the running ${r.what}:\n${e.message}`,
      )
    } else {
      log.error({ err: e, ...r.fields }, `${r.what} reload failed, keeping the running ${r.what}`)
    }
  }
}

/** The config file (or, with none, the built-in defaults), applied to the exporter. */
export function configFile(exporter: Exporter, file: string | undefined): Reloadable {
  return {
    what: 'config',
    fields: {},
    reload: async () => {
      const next = await loadConfig(file)
      const changes = describeChanges(exporter.currentConfig, next)
      const { needRestart } = exporter.reload(next)
      const warnings: Applied['warnings'] = needRestart.length
        ? [[{ settings: needRestart }, 'these settings take effect only after a restart']]
        : []
      return { changes, warnings }
    },
    counter: exporter.reloads.config,
  }
}

/** The web config file, applied to the HTTP server. */
export function webConfigFile(exporter: Exporter, http: HttpState, file: string): Reloadable {
  return {
    what: 'web config',
    fields: { file },
    reload: async () => {
      const next = await loadWebConfig(file)
      const changes = describeWebChanges(http.web, next)
      const { restartNeeded } = http.reload(next)
      return { changes, warnings: restartNeeded.map((r): [object, string] => [{ file }, r]) }
    },
    counter: exporter.reloads.web,
  }
}

/** What SIGHUP reloads, in order: the config file, then the web config file if there is one. */
export function reloadables(
  exporter: Exporter,
  http: HttpState,
  files: { config: string | undefined; web: string | undefined },
): Reloadable[] {
  return [
    configFile(exporter, files.config),
    ...(files.web === undefined ? [] : [webConfigFile(exporter, http, files.web)]),
  ]
}

/** Reload each file in turn; each keeps its running version if its reload fails. */
export async function reloadAll(files: readonly Reloadable[], log: ReloadLog): Promise<void> {
  for (const f of files) await reloadFile(f, log)
}
