// `tcptracer-exporter check-config`: validate the config file and the web config file.
import { parseFlags, UsageError } from './args.js'
import { ConfigError, loadConfig } from '../config/config.js'
import { loadWebConfig } from '../config/webconfig.js'

export async function runCheckConfig(argv: string[]): Promise<number> {
  const values = parseFlags(argv, {
    'config.file': { type: 'string' },
    'web.config.file': { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  })
  if (values.help) {
    process.stdout.write(
      'Usage: tcptracer-exporter check-config [--config.file=FILE] [--web.config.file=FILE]\n\n' +
        'Validate a config file, a web config file (and the certificates and keys it names), or both:\n' +
        'exit 0 when valid, 2 with every problem when not.\n',
    )
    return 0
  }
  const file = values['config.file']
  const webFile = values['web.config.file']
  if (!file && !webFile) {
    throw new UsageError('check-config needs --config.file=FILE, --web.config.file=FILE or both')
  }
  let code = 0
  const check = async (f: string, load: (f: string) => Promise<unknown>): Promise<void> => {
    try {
      await load(f)
      process.stdout.write(`${f}: valid\n`)
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e
      process.stderr.write(`${e.message}\n`)
      code = 2
    }
  }
  if (file) await check(file, loadConfig)
  if (webFile) await check(webFile, loadWebConfig)
  return code
}
