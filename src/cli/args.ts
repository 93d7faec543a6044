// Command-line helpers shared by the subcommands.
import { parseArgs, type ParseArgsConfig } from 'node:util'

/** A bad flag or value: printed with a pointer to --help, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError'
}

/** Parse a base-10 integer flag value and check its range. */
export function parseIntArg(flag: string, raw: string, min: number, max: number): number {
  if (!/^\d+$/.test(raw.trim())) {
    throw new UsageError(`${flag} must be an integer from ${min} to ${max}, got "${raw}"`)
  }
  const v = Number(raw.trim())
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    throw new UsageError(`${flag} must be an integer from ${min} to ${max}, got ${raw}`)
  }
  return v
}

export function formatUsage(text: string): string {
  return text.endsWith('\n') ? text : `${text}\n`
}

/** node:util parseArgs, strict and without positionals; its errors become UsageErrors. */
export function parseFlags<O extends NonNullable<ParseArgsConfig['options']>>(argv: string[], options: O) {
  try {
    return parseArgs({ args: argv, strict: true, allowPositionals: false, options }).values
  } catch (e) {
    throw new UsageError((e as Error).message)
  }
}
