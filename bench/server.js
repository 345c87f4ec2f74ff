/**
 * npm run bench:server — live WebSocket clients through one sync server on loopback.
 * Each client writes one row per second; the figure is the time from the commit on one
 * client to its arrival at every other client (p50, p99), plus the server's peak memory,
 * errors, and whether every replica ends identical. The server runs in its own process and
 * the clients are spread over worker processes (bench/server-worker.js), each client a real
 * in-memory replica with a real live session. Flags: --clients N (default 500), --seconds S
 * (default 60), --workers W (default: one per CPU), --interval MS (the server's
 * liveIntervalMs; default: the server's default), --json, --profile DIR (CPU profiles).
 */
import { fork } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'

const args = process.argv.slice(2)
const flag = (name, fallback) => {
  const i = args.indexOf(`--${name}`)
  return i >= 0 ? Number(args[i + 1]) : fallback
}
const CLIENTS = flag('clients', 500)
const SECONDS = flag('seconds', 60)
const WORKERS = Math.max(1, Math.min(CLIENTS, flag('workers', availableParallelism())))
const INTERVAL = flag('interval', undefined)
const json = args.includes('--json')
/** --profile DIR: CPU profiles of the server and the workers (node --cpu-prof) in DIR. */
const profile = args.includes('--profile') ? args[args.indexOf('--profile') + 1] : undefined
const execArgv = profile ? ['--cpu-prof', `--cpu-prof-dir=${profile}`] : []
const DRAIN_MS = 30_000
const log = (m) => process.stderr.write(`${m}\n`)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** The server runs in its own process, so its peak memory and CPU are its own. */
function startServer() {
  const child = fork(new URL('./server-child.js', import.meta.url), INTERVAL === undefined ? [] : [String(INTERVAL)], {
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    execArgv,
  })
  return new Promise((resolve, reject) => {
    child.once('message', (m) => resolve({ child, url: m.url }))
    child.once('exit', (code) => reject(new Error(`server exited with ${code}`)))
  })
}

/** Asks a child something and resolves with its first answer of `type`. */
function ask(child, message, type) {
  return new Promise((resolve) => {
    const on = (m) => {
      if (m.type !== type) return
      child.off('message', on)
      resolve(m)
    }
    child.on('message', on)
    child.send(message)
  })
}

function startWorker(url, first, last) {
  const child = fork(new URL('./server-worker.js', import.meta.url), [url, String(first), String(last)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    execArgv,
  })
  const worker = { child, first, last, online: false, written: 0, arrivals: 0, errors: 0, exited: false }
  child.on('message', (m) => {
    if (m.type === 'online') worker.online = true
    if (m.type === 'progress') Object.assign(worker, { written: m.written, arrivals: m.arrivals, errors: m.errors })
  })
  child.on('exit', (code) => {
    worker.exited = true
    if (code !== 0) log(`worker ${first}..${last - 1} exited with ${code}`)
  })
  return worker
}

/** Busy and total jiffies of the whole machine (Linux /proc/stat), to see whether other load ran meanwhile. */
function machineCpu() {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1, 9).map(Number)
    const idle = (f[3] ?? 0) + (f[4] ?? 0)
    const total = f.reduce((a, b) => a + b, 0)
    return { busy: total - idle, total }
  } catch {
    return undefined
  }
}

/** The value at percentile p of a histogram given as sorted [ms, count] pairs. */
function percentile(buckets, total, p) {
  if (total === 0) return null
  const rank = Math.min(total - 1, Math.floor((p / 100) * total))
  let seen = 0
  for (const [ms, count] of buckets) {
    seen += count
    if (seen > rank) return ms
  }
  return buckets.at(-1)[0]
}

async function main() {
  const { child: server, url } = await startServer()
  const dbUrl = `${url.replace(/^http/, 'ws')}/db/bench`
  log(`server ${url}; ${CLIENTS} clients in ${WORKERS} worker processes, ${SECONDS} s`)
  const workers = []
  for (let w = 0; w < WORKERS; w++) {
    workers.push(startWorker(dbUrl, Math.floor((w * CLIENTS) / WORKERS), Math.floor(((w + 1) * CLIENTS) / WORKERS)))
  }
  const connectEnd = Date.now() + 120_000
  while (!workers.every((w) => w.online)) {
    if (Date.now() > connectEnd || workers.some((w) => w.exited)) throw new Error('clients did not all connect')
    await sleep(50)
  }
  // Let the first frames settle, then start every worker's clients at the same moment.
  await sleep(1000)
  const serverCpu0 = await ask(server, { type: 'cpu' }, 'cpu')
  const machine0 = machineCpu()
  const at = Date.now() + 200
  for (const w of workers) w.child.send({ type: 'start', at })
  log('clients connected; writing...')
  await sleep(at - Date.now() + SECONDS * 1000)
  for (const w of workers) w.child.send({ type: 'stop' })
  const serverCpu1 = await ask(server, { type: 'cpu' }, 'cpu')
  const machine1 = machineCpu()
  await sleep(100)
  const written = () => workers.reduce((n, w) => n + w.written, 0)
  const arrivals = () => workers.reduce((n, w) => n + w.arrivals, 0)
  log(`wrote ${written()} rows in ${SECONDS} s (${arrivals()} arrivals so far); draining...`)
  const drainStart = Date.now()
  while (arrivals() < written() * (CLIENTS - 1) && Date.now() - drainStart < DRAIN_MS) await sleep(200)
  const drainMs = Date.now() - drainStart
  // Every replica's digest, and the server's.
  const digests = new Set()
  for (const w of workers) for (const d of (await ask(w.child, { type: 'digest' }, 'digest')).digests) digests.add(d)
  const serverDigest = (await ask(server, { type: 'digest' }, 'digest')).digest
  log('closing sessions...')
  const done = await Promise.all(workers.map((w) => ask(w.child, { type: 'close' }, 'done')))
  const serverDone = await ask(server, { type: 'stop' }, 'stopped')

  const merged = new Map()
  for (const d of done) for (const [ms, n] of d.buckets) merged.set(ms, (merged.get(ms) ?? 0) + n)
  const buckets = [...merged].sort((a, b) => a[0] - b[0])
  const rowsWritten = done.reduce((n, d) => n + d.written, 0)
  const measured = done.reduce((n, d) => n + d.arrivals, 0)
  const expected = rowsWritten * (CLIENTS - 1)
  const errors = done.reduce((n, d) => n + d.errors, 0)
  const errorCodes = {}
  for (const d of done)
    for (const [code, n] of Object.entries(d.errorCodes)) errorCodes[code] = (errorCodes[code] ?? 0) + n
  const serverCpuMs = (serverCpu1.user - serverCpu0.user + serverCpu1.system - serverCpu0.system) / 1000
  const result = {
    clients: CLIENTS,
    seconds: SECONDS,
    workers: WORKERS,
    rowsWritten,
    rowsIntended: CLIENTS * SECONDS,
    arrivalsExpected: expected,
    arrivalsMeasured: measured,
    p50Ms: percentile(buckets, measured, 50),
    p99Ms: percentile(buckets, measured, 99),
    maxMs: buckets.length ? buckets.at(-1)[0] : null,
    serverPeakRssMb: serverDone.maxRssMb,
    serverCpuPercent: Math.round((serverCpuMs / (SECONDS * 1000)) * 100),
    workerCpuPercent: done.map((d) => d.cpuPercent),
    workerPeakRssMb: done.map((d) => d.maxRssMb),
    // All cores together: 100 per core (200 on two); what exceeds the server and the workers is other load.
    machineCpuPercent:
      machine0 && machine1
        ? Math.round(
            ((machine1.busy - machine0.busy) / (machine1.total - machine0.total)) * availableParallelism() * 100,
          )
        : null,
    workerLoopDelayP99Ms: done.map((d) => d.loopDelayP99Ms),
    workerLoopDelayMaxMs: done.map((d) => d.loopDelayMaxMs),
    drainMs,
    changeEventsPerClientSecond:
      Math.round((done.reduce((n, d) => n + d.changeEvents, 0) / CLIENTS / (SECONDS + drainMs / 1000)) * 10) / 10,
    errors,
    ...(errors > 0 && { errorCodes }),
    identical: digests.size === 1,
    serverIdentical: digests.size === 1 && digests.has(serverDigest),
    target: 'p99 under 100 ms, zero errors, every replica identical',
  }
  result.pass = result.p99Ms !== null && result.p99Ms < 100 && errors === 0 && result.identical && measured === expected
  if (json) console.log(JSON.stringify(result, null, 2))
  else
    for (const [k, v] of Object.entries(result))
      console.log(`${k.padEnd(18)} ${Array.isArray(v) ? v.join(', ') : typeof v === 'object' ? JSON.stringify(v) : v}`)
}

await main()
