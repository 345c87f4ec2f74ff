/**
 * npm run bench:server — live WebSocket clients through one sync server on loopback.
 * Each client writes one row per second; the figure is the time from the commit on one
 * client to its arrival at every other client (p50, p99), plus the server's peak memory,
 * errors, and whether every replica ends identical. Flags: --clients N (default 500),
 * --seconds S (default 60), --json.
 */
import { fork } from 'node:child_process'
import { createHash } from 'node:crypto'
import { openReplica } from 'sqlite-converge'

const args = process.argv.slice(2)
const flag = (name, fallback) => {
  const i = args.indexOf(`--${name}`)
  return i >= 0 ? Number(args[i + 1]) : fallback
}
const CLIENTS = flag('clients', 500)
const SECONDS = flag('seconds', 60)
const json = args.includes('--json')
const DRAIN_MS = 30_000
const log = (m) => process.stderr.write(`${m}\n`)

/** The server runs in its own process, so its peak memory is its own. */
function startServer() {
  const child = fork(new URL('./server-child.js', import.meta.url), [], {
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  })
  return new Promise((resolve, reject) => {
    child.once('message', (m) => resolve({ child, url: m.url }))
    child.once('exit', (code) => reject(new Error(`server exited with ${code}`)))
  })
}

function stopServer(child) {
  return new Promise((resolve) => {
    child.once('message', (m) => resolve(m))
    child.send('stop')
  })
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
}

function digest(replica) {
  const rows = replica.db.prepare('SELECT id, origin, sent FROM events ORDER BY id').raw().all()
  return createHash('sha256').update(JSON.stringify(rows)).digest('hex')
}

async function main() {
  const { child, url } = await startServer()
  const dbUrl = `${url.replace(/^http/, 'ws')}/db/bench`
  log(`server ${url}; ${CLIENTS} clients, ${SECONDS} s`)
  const latencies = []
  let errors = 0
  const clients = []
  for (let i = 0; i < CLIENTS; i++) {
    const replica = openReplica(':memory:')
    replica.db.exec('CREATE TABLE events (id TEXT PRIMARY KEY, origin INTEGER NOT NULL, sent REAL NOT NULL)')
    replica.enableSync('events')
    const client = { i, replica, seen: 0, written: 0, session: null }
    const newRows = replica.db.prepare('SELECT rowid, origin, sent FROM events WHERE rowid > ? ORDER BY rowid')
    client.session = replica.connect(dbUrl)
    client.session.on('change', () => {
      const now = Date.now()
      for (const row of newRows.all(client.seen)) {
        client.seen = row.rowid
        if (row.origin !== i) latencies.push(now - row.sent)
      }
    })
    client.session.on('status', (s) => {
      if (s.error) errors++
    })
    client.insert = replica.db.prepare('INSERT INTO events (id, origin, sent) VALUES (?, ?, ?)')
    clients.push(client)
  }
  log('clients connected; writing...')
  const start = Date.now()
  const timers = clients.map((c) =>
    setTimeout(() => {
      c.timer = setInterval(() => c.insert.run(`${c.i}-${c.written++}`, c.i, Date.now()), 1000)
    }, Math.random() * 1000),
  )
  await new Promise((r) => setTimeout(r, SECONDS * 1000))
  for (const t of timers) clearTimeout(t)
  for (const c of clients) clearInterval(c.timer)
  const written = clients.reduce((n, c) => n + c.written, 0)
  const expected = written * (CLIENTS - 1)
  log(`wrote ${written} rows in ${((Date.now() - start) / 1000).toFixed(0)} s; draining...`)
  const drainEnd = Date.now() + DRAIN_MS
  while (latencies.length < expected && Date.now() < drainEnd) await new Promise((r) => setTimeout(r, 200))
  const digests = new Set(clients.map((c) => digest(c.replica)))
  log('closing sessions...')
  const closing = Promise.all(clients.map((c) => c.session.close()))
  await Promise.race([closing, new Promise((r) => setTimeout(r, 10_000))])
  const server = await stopServer(child)
  latencies.sort((a, b) => a - b)
  const result = {
    clients: CLIENTS,
    seconds: SECONDS,
    rowsWritten: written,
    arrivalsExpected: expected,
    arrivalsMeasured: latencies.length,
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
    serverPeakRssMb: server.maxRssMb,
    errors,
    identical: digests.size === 1,
    target: 'p99 under 100 ms, zero errors, every replica identical',
  }
  result.pass =
    result.p99Ms !== null && result.p99Ms < 100 && errors === 0 && result.identical && latencies.length === expected
  for (const c of clients) c.replica.close()
  if (json) console.log(JSON.stringify(result, null, 2))
  else for (const [k, v] of Object.entries(result)) console.log(`${k.padEnd(18)} ${v}`)
}

await main()
