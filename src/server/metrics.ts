/** Prometheus counters and the recent-activity log of the sync server. */

const BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

/** One finished sync, as the status page lists it. */
export interface SyncActivity {
  time: number
  db: string
  client: string
  changesIn: number
  changesOut: number
  ms: number
}

export class Metrics {
  readonly #requests = new Map<string, number>()
  readonly #errors = new Map<string, number>()
  changesReceived = 0
  changesSent = 0
  bytesReceived = 0
  bytesSent = 0
  readonly #buckets = BUCKETS.map(() => 0)
  #applyCount = 0
  #applySum = 0
  /** The last 50 syncs, newest last. */
  readonly recent: SyncActivity[] = []

  request(db: string, status: number): void {
    const key = `db=${label(db)},status=${label(String(status))}`
    this.#requests.set(key, (this.#requests.get(key) ?? 0) + 1)
  }

  error(code: string): void {
    this.#errors.set(code, (this.#errors.get(code) ?? 0) + 1)
  }

  applySeconds(s: number): void {
    this.#applyCount++
    this.#applySum += s
    BUCKETS.forEach((b, i) => {
      if (s <= b) this.#buckets[i] = (this.#buckets[i] as number) + 1
    })
  }

  activity(a: SyncActivity): void {
    this.recent.push(a)
    if (this.recent.length > 50) this.recent.shift()
  }

  /** The Prometheus text exposition format (version 0.0.4). */
  render(connected: ReadonlyMap<string, number> = new Map()): string {
    const out: string[] = []
    const counter = (name: string, help: string, rows: [string, number][]) => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`)
      for (const [labels, v] of rows) out.push(`${name}${labels ? `{${labels}}` : ''} ${v}`)
    }
    counter('converge_sync_requests_total', 'Sync requests by database and HTTP status.', [...this.#requests])
    counter('converge_changes_received_total', 'Rows received from clients.', [['', this.changesReceived]])
    counter('converge_changes_sent_total', 'Rows sent to clients.', [['', this.changesSent]])
    counter('converge_bytes_received_total', 'Payload bytes received.', [['', this.bytesReceived]])
    counter('converge_bytes_sent_total', 'Payload bytes sent.', [['', this.bytesSent]])
    counter(
      'converge_errors_total',
      'Failed requests by error code.',
      [...this.#errors].map(([code, v]) => [`code=${label(code)}`, v]),
    )
    out.push(
      '# HELP converge_connected_clients Live (WebSocket) clients by database.',
      '# TYPE converge_connected_clients gauge',
      ...[...connected].map(([db, n]) => `converge_connected_clients{db=${label(db)}} ${n}`),
      '# HELP converge_apply_seconds Time to merge a client payload and export the answer.',
      '# TYPE converge_apply_seconds histogram',
    )
    BUCKETS.forEach((b, i) => {
      out.push(`converge_apply_seconds_bucket{le="${b}"} ${this.#buckets[i]}`)
    })
    out.push(
      `converge_apply_seconds_bucket{le="+Inf"} ${this.#applyCount}`,
      `converge_apply_seconds_sum ${this.#applySum}`,
      `converge_apply_seconds_count ${this.#applyCount}`,
    )
    return `${out.join('\n')}\n`
  }
}

/** A quoted Prometheus label value. */
function label(v: string): string {
  return `"${v.replaceAll('\\', '\\\\').replaceAll('"', '\\"').replaceAll('\n', '\\n')}"`
}
