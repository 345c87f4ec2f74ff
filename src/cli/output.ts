/** What the `converge` command prints: JSON encoding of SQLite values, error lines, exit codes. */
import { CommanderError } from 'commander'
import type { AppValue } from '../index.js'

/** A failure of the command line itself (not of the library), with its stable code and exit status. */
export class CliError extends Error {
  /** Stable machine-readable code, printed as `error CODE: ...`. */
  readonly code: string
  /** 1 for a failure, 2 for wrong usage. */
  readonly exitCode: 1 | 2

  constructor(code: string, message: string, exitCode: 1 | 2 = 1) {
    super(message)
    this.name = 'CliError'
    this.code = code
    this.exitCode = exitCode
  }
}

/**
 * A SQLite value as JSON: NULL, numbers and text as themselves; what JSON cannot hold
 * exactly as a tagged object: `{"blob": hex}`, `{"integer": decimal}` beyond 2^53,
 * `{"real": "Infinity"}` for infinite REALs.
 */
export function jsonValue(value: AppValue): unknown {
  if (value instanceof Uint8Array) return { blob: Buffer.from(value).toString('hex') }
  if (typeof value === 'bigint') return { integer: value.toString() }
  if (typeof value === 'number' && !Number.isFinite(value)) return { real: String(value) }
  return value
}

/** A SQLite value for people: text quoted, blobs as X'hex', NULL as NULL. */
export function showValue(value: AppValue): string {
  if (value === null) return 'NULL'
  if (value instanceof Uint8Array) return `X'${Buffer.from(value).toString('hex')}'`
  if (typeof value === 'string') return JSON.stringify(value)
  return String(value)
}

/** Prints a value as indented JSON on stdout. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`)
}

/**
 * Reports a failure on stderr as `error CODE: explanation` and returns the exit status:
 * 2 for wrong usage (commander has already printed the usage), 1 for any other failure.
 */
export function reportError(err: unknown): number {
  if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2
  const code = errorCode(err)
  let message = (err instanceof Error ? err.message : String(err)).replace(/\s*\n\s*/g, ' ')
  // Node prefixes its own messages with the code ("ENOENT: no such file ...").
  if (message.startsWith(`${code}: `)) message = message.slice(code.length + 2)
  process.stderr.write(`error ${code}: ${message}\n`)
  return err instanceof CliError ? err.exitCode : 1
}

/** The library's `ConvergeError` code, a Node or SQLite error code, or INTERNAL. */
function errorCode(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && /^[A-Z][A-Z0-9_]*$/.test(code) ? code : 'INTERNAL'
}
