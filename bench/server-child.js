/** The sync server of bench/server.js, in its own process: reports its URL, and its peak memory when stopped. */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import { createServer } from 'sqlite-converge/server'

const data = mkdtempSync(join(tmpdir(), 'converge-bench-server-'))
const server = await createServer({ port: 0, data, logger: pino({ level: 'warn' }) })
process.send({ url: server.url })
process.on('message', async () => {
  await server.close()
  rmSync(data, { recursive: true, force: true })
  process.send({ maxRssMb: process.resourceUsage().maxRSS / 1024 }, () => process.exit(0))
})
