/**
 * The sync server of bench/server.js, in its own process: reports its URL; answers its CPU
 * time, the digest of its copy of the bench table, and (when stopped) its peak memory.
 * argv[2], when given: the server's liveIntervalMs.
 */
import { createHash } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import pino from 'pino'
import { createServer } from 'sqlite-converge/server'

const data = mkdtempSync(join(tmpdir(), 'converge-bench-server-'))
const interval = process.argv[2] === undefined ? undefined : Number(process.argv[2])
const server = await createServer({
  port: 0,
  data,
  logger: pino({ level: process.env.BENCH_SERVER_LOG ?? 'warn' }, pino.destination(2)),
  ...(interval !== undefined && { liveIntervalMs: interval }),
})
process.send({ url: server.url })
process.on('message', async (m) => {
  if (m.type === 'cpu') {
    process.send({ type: 'cpu', ...process.cpuUsage() })
  } else if (m.type === 'digest') {
    const db = new Database(join(data, 'bench.db'), { readonly: true })
    const rows = db.prepare('SELECT id, origin, sent FROM events ORDER BY id').raw().all()
    db.close()
    process.send({ type: 'digest', digest: createHash('sha256').update(JSON.stringify(rows)).digest('hex') })
  } else if (m.type === 'stop') {
    await server.close()
    rmSync(data, { recursive: true, force: true })
    process.send({ type: 'stopped', maxRssMb: Math.round(process.resourceUsage().maxRSS / 1024) }, () =>
      process.exit(0),
    )
  }
})
