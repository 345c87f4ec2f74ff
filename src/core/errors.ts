/** Typed errors: every failure a caller can act on has a stable `code`. */

/** Stable error codes; the CLI, HTTP layer and apps map on these. */
export type ConvergeErrorCode =
  | 'NO_PRIMARY_KEY'
  | 'NO_SUCH_TABLE'
  | 'NOT_SYNCED'
  | 'BAD_PAYLOAD'
  | 'SCHEMA_MISMATCH'
  | 'SCHEMA_CHANGE_UNSUPPORTED'
  | 'CLOCK_DRIFT'
  | 'CONSTRAINT'
  | 'NO_SUCH_CONFLICT'
  | 'CONFLICT_STALE'
  | 'BAD_ARGUMENT'
  | 'CLOSED'
  | 'BAD_BUNDLE'
  | 'UNTRUSTED_BUNDLE'
  | 'DECRYPT_FAILED'
  | 'UNAUTHORIZED'
  | 'PAYLOAD_TOO_LARGE'
  | 'RATE_LIMITED'
  | 'NO_SUCH_DATABASE'
  | 'NETWORK'
  | 'SERVER_ERROR'

/** The one error class of sqlite-converge; `code` is stable across versions. */
export class ConvergeError extends Error {
  /** Stable machine-readable code. */
  readonly code: ConvergeErrorCode
  /** Extra context (table, columns, limits) for callers and logs. */
  readonly details: Readonly<Record<string, unknown>>

  constructor(
    code: ConvergeErrorCode,
    message: string,
    details: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(message, options)
    this.name = 'ConvergeError'
    this.code = code
    this.details = Object.freeze({ ...details })
  }
}

/** Type guard, optionally narrowing to one code. */
export function isConvergeError(value: unknown, code?: ConvergeErrorCode): value is ConvergeError {
  return value instanceof ConvergeError && (code === undefined || value.code === code)
}
