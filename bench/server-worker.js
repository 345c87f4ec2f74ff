/**
 * One process of bench/server.js's clients: hosts clients FIRST..LAST-1, each a real
 * `openReplica(':memory:')` replica with a real `replica.connect(url)` session. Talks to the
 * parent over IPC:
 *   parent -> { type: 'start', at }        write one row a second per client from `at` (ms since epoch)
 *   parent -> { type: 'stop' }             stop writing
 *   parent -> { type: 'digest' }           reply with the digests of every replica
 *   parent -> { type: 'close' }            close sessions and replicas, reply with the final figures
 *   worker -> { type: 'online' }           every session is online
 *   worker -> { type: 'progress', ... }    every 500 ms: rows written, arrivals measured, errors
 * Latencies (ms from the commit on the writer, Date.now() in its process, to the 'change'
 * event on the receiver, Date.now() in this one: one clock, one machine) are counted in a
 * histogram of 1 ms buckets, so the parent gets exact percentiles without millions of numbers.
 */
import { createHash } from 'node:crypto'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { openReplica } from 'sqlite-converge'

const [url, first, last] = process.argv.slice(2)
const FIRST = Number(first)
const LAST = Number(last)
/** Latencies above this many ms land in the last bucket. */
const MAX_MS = 600_000

const histogram = new Uint32Array(MAX_MS + 1)
let arrivals = 0
/** 'change' events: one per payload that brought something. */
let changeEvents = 0
let errors = 0
const errorCodes = {}
const clients = []

function digest(replica) {
  const rows = replica.db.prepare('SELECT id, origin, sent FROM events ORDER BY id').raw().all()
  return createHash('sha256').update(JSON.stringify(rows)).digest('hex')
}

for (let i = FIRST; i < LAST; i++) {
  const replica = openReplica(':memory:')
  replica.db.exec('CREATE TABLE events (id TEXT PRIMARY KEY, origin INTEGER NOT NULL, sent REAL NOT NULL)')
  replica.enableSync('events')
  const client = { i, replica, seen: 0, written: 0, session: null, timer: null }
  const newRows = replica.db.prepare('SELECT rowid, origin, sent FROM events WHERE rowid > ? ORDER BY rowid')
  client.insert = replica.db.prepare('INSERT INTO events (id, origin, sent) VALUES (?, ?, ?)')
  client.session = replica.connect(url)
  client.session.on('change', () => {
    const now = Date.now()
    changeEvents++
    for (const row of newRows.all(client.seen)) {
      client.seen = row.rowid
      if (row.origin !== i) {
        histogram[Math.max(0, Math.min(MAX_MS, now - row.sent))]++
        arrivals++
      }
    }
  })
  client.session.on('status', (s) => {
    if (s.error) {
      errors++
      errorCodes[s.error.code] = (errorCodes[s.error.code] ?? 0) + 1
    }
  })
  clients.push(client)
}

const written = () => clients.reduce((n, c) => n + c.written, 0)
const progress = () => process.send({ type: 'progress', written: written(), arrivals, errors })

// Report once every session is online (its first frame answered or not: online means connected).
const waitOnline = setInterval(() => {
  if (clients.every((c) => c.session.status.state === 'online')) {
    clearInterval(waitOnline)
    process.send({ type: 'online' })
  }
}, 20)

/** How late this process's event loop ran, over the writing phase. */
const loopDelay = monitorEventLoopDelay({ resolution: 10 })
let cpuAtStart
let cpuAtStop
let startedAt
let stoppedAt
const reporter = setInterval(progress, 500)

process.on('message', async (m) => {
  if (m.type === 'start') {
    // Each client writes at its own random offset within the second, then every second.
    for (const c of clients) {
      c.timer = setTimeout(
        () => {
          const write = () => c.insert.run(`${c.i}-${c.written++}`, c.i, Date.now())
          write()
          c.timer = setInterval(write, 1000)
        },
        Math.max(0, m.at - Date.now()) + Math.random() * 1000,
      )
    }
    setTimeout(
      () => {
        loopDelay.enable()
        cpuAtStart = process.cpuUsage()
        startedAt = performance.now()
      },
      Math.max(0, m.at - Date.now()),
    )
  } else if (m.type === 'stop') {
    for (const c of clients) {
      clearTimeout(c.timer)
      clearInterval(c.timer)
    }
    cpuAtStop = process.cpuUsage(cpuAtStart)
    loopDelay.disable()
    stoppedAt = performance.now()
    progress()
  } else if (m.type === 'digest') {
    process.send({ type: 'digest', digests: clients.map((c) => digest(c.replica)) })
  } else if (m.type === 'close') {
    clearInterval(reporter)
    const closing = Promise.all(clients.map((c) => c.session.close()))
    await Promise.race([closing, new Promise((r) => setTimeout(r, 10_000))])
    for (const c of clients) c.replica.close()
    const wallMs = stoppedAt - startedAt
    const cpuMs = (cpuAtStop.user + cpuAtStop.system) / 1000
    // Sparse histogram: [ms, count] pairs.
    const buckets = []
    for (let ms = 0; ms <= MAX_MS; ms++) if (histogram[ms] > 0) buckets.push([ms, histogram[ms]])
    process.send(
      {
        type: 'done',
        written: written(),
        arrivals,
        changeEvents,
        errors,
        errorCodes,
        buckets,
        cpuPercent: Math.round((cpuMs / wallMs) * 100),
        maxRssMb: Math.round(process.resourceUsage().maxRSS / 1024),
        loopDelayP99Ms: Math.round(loopDelay.percentile(99) / 1e6),
        loopDelayMaxMs: Math.round(loopDelay.max / 1e6),
      },
      () => process.exit(0),
    )
  }
})
