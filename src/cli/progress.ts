/** A progress bar for long exports and imports, drawn on stderr only when a person is watching. */
import cliProgress from 'cli-progress'

/** Below this many changes an export or import is quick enough to need no bar. */
const SHOW_FROM = 4096

/** Reports rows processed so far (and the total when known) to a bar that appears once the work is large. */
export interface Progress {
  /** Rows done so far; `total` when the caller knows it. */
  update(rows: number, total?: number): void
  /** Removes the bar, if one was drawn. */
  stop(): void
}

/** True when both output streams are terminals and the output is not meant for a program. */
export function interactive(json = false): boolean {
  return !json && process.stdout.isTTY === true && process.stderr.isTTY === true
}

/** A progress bar labelled `label` ("exporting"), or one that draws nothing when `enabled` is false. */
export function progressBar(label: string, enabled: boolean): Progress {
  let bar: cliProgress.SingleBar | undefined
  return {
    update(rows, total) {
      if (!enabled || (bar === undefined && Math.max(rows, total ?? 0) < SHOW_FROM)) return
      if (bar === undefined) {
        const known = total !== undefined
        bar = new cliProgress.SingleBar({
          format: known
            ? `${label} {bar} {percentage}% | {value}/{total} changes | {duration_formatted}`
            : `${label} {value} changes | {duration_formatted}`,
          clearOnComplete: true,
          stream: process.stderr,
        })
        bar.start(total ?? 0, rows)
      } else {
        if (total !== undefined) bar.setTotal(total)
        bar.update(rows)
      }
    },
    stop() {
      bar?.stop()
    },
  }
}
