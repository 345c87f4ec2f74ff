/** A progress bar for long exports and imports, drawn on stderr only when a person is watching. */
import cliProgress from 'cli-progress'

/** Below this many changes an export or import is quick enough to need no bar. */
const SHOW_FROM = 4096

/** Rows done so far, and the total when the caller knows it. */
type OnProgress = (rows: number, total?: number) => void

/**
 * Runs `fn` with a progress callback. On a terminal (stdout and stderr both), a bar appears
 * once the work passes a few thousand changes and is cleared when `fn` ends; when output
 * is piped, nothing is drawn.
 */
export function withProgress<T>(label: string, fn: (onProgress: OnProgress) => T): T {
  if (process.stdout.isTTY !== true || process.stderr.isTTY !== true) return fn(() => {})
  let bar: cliProgress.SingleBar | undefined
  const onProgress: OnProgress = (rows, total) => {
    if (bar === undefined) {
      if (Math.max(rows, total ?? 0) < SHOW_FROM) return
      bar = new cliProgress.SingleBar({
        format:
          total === undefined
            ? `${label} {value} changes | {duration_formatted}`
            : `${label} {bar} {percentage}% | {value}/{total} changes | {duration_formatted}`,
        formatValue: (value, _options, type) =>
          type === 'value' || type === 'total' ? value.toLocaleString('en-US') : String(value),
        clearOnComplete: true,
        stream: process.stderr,
      })
      bar.start(total ?? 0, rows)
      return
    }
    if (total !== undefined) bar.setTotal(total)
    bar.update(rows)
  }
  try {
    return fn(onProgress)
  } finally {
    bar?.stop()
  }
}
