// Live sync over WebSockets: Replica.connect against a real server on a free loopback port.
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer as createTcpServer, type Server, Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { SignJWT } from 'jose'
import { pino } from 'pino'
import { ACK_PROTOCOL, type LiveSession, type LiveStatus, openReplica, type Replica } from 'sqlite-converge'
import { type ConvergeServer, createServer, type ServerOptions } from 'sqlite-converge/server'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { WebSocket } from 'ws'
import { fileHash } from './helpers/db-hash.js'
import { capture } from './helpers/logs.js'

const BIN = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js')
const TODOS = 'CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT, done INTEGER)'
/** Fast reconnects, so the tests do not wait for the production backoff. */
const FAST = { minBackoffMs: 50, maxBackoffMs: 300 }

let dir: string
let servers: ConvergeServer[]
let replicas: Replica[]
let sessions: LiveSession[]
let cleanups: (() => unknown)[]

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'converge-live-'))
  servers = []
  replicas = []
  sessions = []
  cleanups = []
})

afterEach(async () => {
  for (const s of sessions) await s.close()
  for (const c of cleanups) await c()
  for (const s of servers) await s.close()
  for (const r of replicas) r.close()
  rmSync(dir, { recursive: true, force: true })
})

async function start(options: ServerOptions = {}): Promise<ConvergeServer> {
  const s = await createServer({ port: 0, data: join(dir, 'data'), logger: pino({ level: 'silent' }), ...options })
  servers.push(s)
  return s
}

async function stop(s: ConvergeServer): Promise<void> {
  await s.close()
  servers = servers.filter((x) => x !== s)
}

function replica(name: string): Replica {
  const r = openReplica(join(dir, `${name}.db`))
  r.db.exec(TODOS)
  r.enableSync('todos')
  replicas.push(r)
  return r
}

/** Opens a live session and records its status events. */
function connect(r: Replica, url: string, options = {}): { session: LiveSession; statuses: LiveStatus[] } {
  const session = r.connect(url, { ...FAST, ...options })
  sessions.push(session)
  const statuses: LiveStatus[] = []
  session.on('status', (s) => statuses.push(s))
  return { session, statuses }
}

function rows(r: Replica): unknown[] {
  return r.db.prepare('SELECT * FROM todos ORDER BY id').all()
}

function insert(r: Replica, id: string, title: string): void {
  r.db.prepare('INSERT INTO todos VALUES (?, ?, 0)').run(id, title)
}

async function waitFor(check: () => boolean, what: string, timeoutMs = 10_000): Promise<number> {
  const t0 = performance.now()
  while (!check()) {
    if (performance.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 2))
  }
  return performance.now() - t0
}

const online = (s: LiveSession) => () => s.status.state === 'online'

/** Digest of the server's database file, read-only. */
function serverHash(name = 'shop'): string {
  return fileHash(join(dir, 'data', `${name}.db`))
}

function serverRows(name = 'shop'): unknown[] {
  const db = new Database(join(dir, 'data', `${name}.db`), { readonly: true })
  try {
    return db.prepare('SELECT * FROM todos ORDER BY id').all()
  } finally {
    db.close()
  }
}

/** A raw WebSocket; resolves once open, or rejects with the upgrade's error. */
function rawSocket(url: string, headers: Record<string, string> = {}, protocols: string[] = []): Promise<WebSocket> {
  return new Promise((ok, fail) => {
    const ws = new WebSocket(url, protocols, { headers })
    cleanups.push(() => ws.terminate())
    ws.once('open', () => ok(ws))
    ws.once('error', fail)
  })
}

function nextMessage(ws: WebSocket): Promise<{ data: Buffer; isBinary: boolean }> {
  return new Promise((ok, fail) => {
    ws.once('message', (data, isBinary) => ok({ data: data as Buffer, isBinary }))
    ws.once('close', (code) => fail(new Error(`closed with ${code}`)))
  })
}

describe('live sync', () => {
  it('a write on one replica reaches the others in real time, also from another connection', async () => {
    const s = await start()
    const url = `${s.url.replace('http:', 'ws:')}/db/shop`
    const [a, b, c] = [replica('a'), replica('b'), replica('c')]
    const changes: { tables: string[]; rows: Record<string, number> }[] = []
    const live = [a, b, c].map((r) => connect(r, url).session)
    live[1]?.on('change', (ch) => changes.push(ch))
    for (const x of live) await waitFor(online(x), 'online')

    const latencies: number[] = []
    for (let i = 0; i < 5; i++) {
      insert(a, `a${i}`, `from a ${i}`)
      latencies.push(
        await waitFor(() => rows(b).length === i + 1 && rows(c).length === i + 1, `row a${i} on b and c`, 2000),
      )
    }
    console.log(`live latency a -> b, c: ${latencies.map((l) => `${l.toFixed(1)} ms`).join(', ')}`)
    expect(Math.max(...latencies)).toBeLessThan(2000)
    expect(changes[0]).toMatchObject({ tables: ['todos'], rows: { todos: 1 } })

    // A write from another connection to c's file (not through the library) is pushed too.
    const other = new Database(join(dir, 'c.db'))
    try {
      const t0 = performance.now()
      other.prepare("INSERT INTO todos VALUES ('x', 'from the shell', 1)").run()
      await waitFor(() => rows(a).length === 6 && rows(b).length === 6, 'the other connection’s row', 2000)
      console.log(`live latency, other connection on c -> a, b: ${(performance.now() - t0).toFixed(1)} ms`)
    } finally {
      other.close()
    }
    expect(rows(a)).toEqual(rows(c))
    expect(rows(b)).toEqual(rows(c))
    expect(serverRows()).toEqual(rows(c))
  })

  it('bursts from three live clients go out in shared payloads, and each change is applied once', async () => {
    const { logger, lines } = capture()
    const s = await start({ logger })
    const url = `${s.url.replace('http:', 'ws:')}/db/shop`
    const rs = [replica('a'), replica('b'), replica('c')]
    const applied = rs.map(() => 0)
    const live = rs.map((r, k) => {
      const { session } = connect(r, url)
      session.on('change', (ch) => {
        applied[k] = (applied[k] as number) + ch.applied
      })
      return session
    })
    for (const x of live) await waitFor(online(x), 'online')
    await waitFor(() => lines.filter((l) => l.msg === 'sync' && l.live).length >= 3, 'the first frames')
    for (let burst = 0; burst < 6; burst++) {
      for (const [k, r] of rs.entries()) {
        for (let i = 0; i < 10; i++) insert(r, `${k}-${burst}-${i}`, `burst ${burst} of ${k}`)
      }
      await new Promise((r) => setTimeout(r, 15))
    }
    await waitFor(() => rs.every((r) => rows(r).length === 180), 'every row on every replica')
    for (const r of rs) expect(rows(r)).toEqual(rows(rs[0] as Replica))
    await waitFor(() => serverRows().length === 180, 'every row on the server')
    expect(serverRows()).toEqual(rows(rs[0] as Replica))

    // Each replica applied each of the others' 120 rows exactly once: as many changes as a
    // fresh replica counts when it imports them once.
    const fresh = openReplica(':memory:')
    fresh.db.exec(TODOS)
    fresh.enableSync('todos')
    const perRow = fresh.importChanges(rs[0]?.exportChanges() as Uint8Array).applied / 180
    fresh.close()
    expect(perRow).toBeGreaterThanOrEqual(1)
    expect(applied).toEqual([120 * perRow, 120 * perRow, 120 * perRow])

    // Fan-out is coalesced: clients that hold what the last flush sent share one export, so
    // the server exported fewer payloads than it sent.
    const flushes = lines.filter((l) => l.msg === 'live flush')
    const exports = flushes.reduce((n, l) => n + (l.exports as number), 0)
    const sends = flushes.reduce((n, l) => n + (l.sends as number), 0)
    expect(sends).toBeGreaterThan(0)
    expect(exports).toBeLessThan(sends)
    expect(flushes.some((l) => (l.sends as number) === 3 && l.exports === 1)).toBe(true)
  })

  it('clients behind the shared position get their own export: late joiners and HTTP writers converge', async () => {
    const s = await start({ liveIntervalMs: 50 })
    const url = `${s.url.replace('http:', 'ws:')}/db/shop`
    const [a, b, c, d] = [replica('a'), replica('b'), replica('c'), replica('d')]
    const live = [a, b].map((r) => connect(r, url).session)
    for (const x of live) await waitFor(online(x), 'online')
    for (let i = 0; i < 20; i++) {
      insert(a, `a${i}`, 'from a')
      insert(b, `b${i}`, 'from b')
      if (i === 5) {
        // c wrote offline and joins late; d syncs over HTTP in the middle of the stream.
        insert(c, 'c0', 'offline on c')
        connect(c, url)
      }
      if (i === 10) {
        insert(d, 'd0', 'over HTTP')
        await d.sync(`${s.url}/db/shop`)
      }
      await new Promise((r) => setTimeout(r, 5))
    }
    await waitFor(() => [a, b, c].every((r) => rows(r).length === 42), 'every row on the live replicas')
    await d.sync(`${s.url}/db/shop`)
    for (const r of [b, c, d]) expect(rows(r)).toEqual(rows(a))
    expect(serverRows()).toEqual(rows(a))
  })

  it('flow control: a client that acknowledges gets one payload at a time, the next holding all it missed', async () => {
    const { logger, lines } = capture()
    const s = await start({ logger, liveIntervalMs: 10 })
    const url = `${s.url.replace('http:', 'ws:')}/db/shop`
    const [a, b] = [replica('a'), replica('b')]
    insert(a, 'seed', 'seed')
    await a.sync(`${s.url}/db/shop`)
    // b speaks the acknowledging subprotocol by hand, so the test decides when it acks.
    const slow = await rawSocket(url, {}, [ACK_PROTOCOL])
    expect(slow.protocol).toBe(ACK_PROTOCOL)
    const received: Uint8Array[] = []
    slow.on('message', (data, isBinary) => {
      if (isBinary) received.push(new Uint8Array(data as Buffer))
    })
    slow.send(new Uint8Array(b.exportChanges()))
    await waitFor(() => received.length === 1, 'the answer to its first frame')
    b.importChanges(received[0] as Uint8Array)
    expect(rows(b)).toEqual(rows(a))
    // Not acknowledged yet: a's writes, over many flushes, send it nothing more.
    const live = connect(a, url).session
    await waitFor(online(live), 'online')
    for (let i = 0; i < 10; i++) {
      insert(a, `a${i}`, 'while b is busy')
      await new Promise((r) => setTimeout(r, 15))
    }
    await waitFor(() => serverRows().length === 11, "a's rows on the server")
    await new Promise((r) => setTimeout(r, 100))
    expect(received).toHaveLength(1)
    // Its acknowledgement releases one payload with everything it lacks.
    slow.send('ack')
    await waitFor(() => received.length === 2, 'the next payload')
    b.importChanges(received[1] as Uint8Array)
    expect(rows(b)).toEqual(rows(a))
    await new Promise((r) => setTimeout(r, 50))
    expect(received).toHaveLength(2)
    // A client without the subprotocol is not held back: it gets every flush unasked.
    const eager = await rawSocket(url)
    expect(eager.protocol).toBe('')
    const eagerGot: Buffer[] = []
    eager.on('message', (data, isBinary) => {
      if (isBinary) eagerGot.push(data as Buffer)
    })
    eager.send(new Uint8Array(replica('c').exportChanges()))
    await waitFor(() => eagerGot.length === 1, 'the answer to the eager client')
    for (let i = 0; i < 3; i++) {
      insert(a, `late${i}`, 'late')
      await waitFor(() => eagerGot.length === 2 + i, `flush ${i} on the eager client`)
    }
    expect(lines.some((l) => l.msg === 'live flush')).toBe(true)
  })

  it('a local write folded by an incoming import before the poll saw it is still pushed', async () => {
    const s = await start()
    const url = `${s.url.replace('http:', 'ws:')}/db/shop`
    const [a, b] = [replica('a'), replica('b')]
    // a polls so rarely that only the push after an import can send its write in time.
    const slow = connect(a, url, { pollMs: 60_000 }).session
    const fast = connect(b, url).session
    await waitFor(online(slow), 'a online')
    await waitFor(online(fast), 'b online')
    insert(a, 'a1', 'written on a')
    insert(b, 'b1', 'written on b') // reaches a, whose import folds a1 into its metadata
    await waitFor(() => rows(b).length === 2, 'a1 on b', 5000)
    await waitFor(() => rows(a).length === 2, 'b1 on a', 5000)
    expect(rows(b)).toEqual(rows(a))
  })

  it('metrics and the status page count live clients per database', async () => {
    const s = await start()
    const url = `${s.url.replace('http:', 'ws:')}/db/shop`
    const [a, b] = [replica('a'), replica('b')]
    const live = [a, b].map((r) => connect(r, url).session)
    for (const x of live) await waitFor(online(x), 'online')
    const metrics = await (await fetch(`${s.url}/metrics`)).text()
    expect(metrics).toContain('converge_connected_clients{db="shop"} 2')
    const page = await (await fetch(`${s.url}/`)).text()
    expect(page).toContain('2 live clients')
    await live[0]?.close()
    await new Promise((r) => setTimeout(r, 100))
    expect(await (await fetch(`${s.url}/metrics`)).text()).toContain('converge_connected_clients{db="shop"} 1')
  })

  it('does not push when nothing changed', async () => {
    const { logger, lines } = capture()
    const s = await start({ logger })
    const a = replica('a')
    const { session } = connect(a, `${s.url}/db/shop`)
    await waitFor(online(session), 'online')
    await waitFor(() => lines.some((l) => l.msg === 'sync' && l.live), 'the first frame')
    await new Promise((r) => setTimeout(r, 300))
    expect(lines.filter((l) => l.msg === 'sync' && l.live)).toHaveLength(1)
    insert(a, '1', 'milk')
    await waitFor(() => lines.filter((l) => l.msg === 'sync' && l.live).length === 2, 'the push')
    await new Promise((r) => setTimeout(r, 300))
    expect(lines.filter((l) => l.msg === 'sync' && l.live)).toHaveLength(2)
  })

  it('offline edits merge on reconnect; status goes offline, connecting, online', async () => {
    let s = await start()
    const port = new URL(s.url).port
    const url = `${s.url}/db/shop`
    const [a, b] = [replica('a'), replica('b')]
    const ca = connect(a, url)
    const cb = connect(b, url)
    await waitFor(() => online(ca.session)() && online(cb.session)(), 'online')
    insert(a, '1', 'before')
    await waitFor(() => rows(b).length === 1, 'first row')

    await stop(s)
    await waitFor(() => ca.session.status.state !== 'online' && cb.session.status.state !== 'online', 'offline')
    const offlineAt = ca.statuses.findIndex((x) => x.state === 'offline')
    expect(ca.statuses[offlineAt]?.error?.code).toBe('NETWORK')
    insert(a, '2', 'offline on a')
    b.db.prepare("UPDATE todos SET done = 1 WHERE id = '1'").run()
    insert(b, '3', 'offline on b')
    await new Promise((r) => setTimeout(r, 400))

    s = await start({ port: Number(port) })
    await waitFor(() => rows(a).length === 3 && rows(b).length === 3, 'convergence')
    await waitFor(() => JSON.stringify(rows(a)) === JSON.stringify(rows(b)), 'equal rows')
    expect(rows(a)).toEqual([
      { id: '1', title: 'before', done: 1 },
      { id: '2', title: 'offline on a', done: 0 },
      { id: '3', title: 'offline on b', done: 0 },
    ])
    for (const { statuses } of [ca, cb]) {
      const states = statuses.map((x) => x.state)
      const i = states.indexOf('offline')
      const j = states.indexOf('connecting', i)
      const k = states.indexOf('online', j)
      expect(i, states.join(',')).toBeGreaterThan(0)
      expect(j).toBeGreaterThan(i)
      expect(k).toBeGreaterThan(j)
      expect(states.at(-1)).toBe('online')
    }
  })

  it('a server restarted in the middle of a stream of writes loses nothing', async () => {
    let s = await start()
    const port = Number(new URL(s.url).port)
    const url = `${s.url}/db/shop`
    const [a, b] = [replica('a'), replica('b')]
    const ca = connect(a, url)
    connect(b, url)
    await waitFor(online(ca.session), 'online')
    for (let i = 0; i < 40; i++) {
      insert(a, String(i).padStart(2, '0'), `row ${i}`)
      if (i === 15) await stop(s)
      if (i === 25) s = await start({ port })
      await new Promise((r) => setTimeout(r, 10))
    }
    await waitFor(() => rows(b).length === 40, 'all 40 rows on b')
    expect(rows(b)).toEqual(rows(a))
    await waitFor(() => serverRows().length === 40, 'all 40 rows on the server')
  })

  it('a connection killed after the server applied a frame: the resend applies nothing twice', async () => {
    const { logger, lines } = capture()
    const s = await start({ logger })
    const target = new URL(s.url)
    const proxy = await dropAnswersOnce(Number(target.port))
    const [a, b] = [replica('a'), replica('b')]
    connect(b, `${s.url}/db/shop`)
    insert(a, '1', 'milk')
    insert(a, '2', 'eggs')
    a.db.prepare("UPDATE todos SET done = 1 WHERE id = '1'").run()
    const applies = () => lines.filter((l) => l.msg === 'sync' && l.client === a.siteId)
    const ca = connect(a, `ws://127.0.0.1:${proxy.port}/db/shop`)
    // The first frame reaches the server, its answer never reaches a; then the socket dies.
    await waitFor(() => applies().length === 1, 'the first delivery')
    proxy.kill()
    await waitFor(() => ca.statuses.some((x) => x.state === 'offline'), 'a offline')
    await waitFor(() => applies().length >= 2 && online(ca.session)(), 'the second delivery')
    await waitFor(() => rows(b).length === 2, 'rows on b')
    const [first, ...rest] = applies()
    expect(first?.applied).toBeGreaterThan(0)
    expect(rest.reduce((n, l) => n + (l.applied as number), 0)).toBe(0)
    expect(rest[0]?.changesIn).toBe(first?.changesIn)
    expect(serverRows()).toEqual(rows(a))
    expect(rows(b)).toEqual(rows(a))
    // Acknowledged now: later pushes send only the new write.
    insert(a, '3', 'bread')
    await waitFor(() => applies().length === rest.length + 2, 'the next push')
    expect(applies().at(-1)).toMatchObject({ changesIn: 1, applied: expect.any(Number) })
    expect(applies().at(-1)?.applied).toBeGreaterThan(0)

    /** A TCP proxy whose first connection passes the upgrade but swallows every later server frame. */
    async function dropAnswersOnce(port: number): Promise<{ port: number; kill: () => void }> {
      const open: Socket[] = []
      let first = true
      const server: Server = createTcpServer((client) => {
        const drop = first
        first = false
        const upstream = new Socket()
        open.push(client, upstream)
        let chunks = 0
        upstream.connect(port, '127.0.0.1')
        client.on('data', (d) => upstream.write(d))
        upstream.on('data', (d) => {
          if (!drop || chunks++ === 0) client.write(d)
        })
        const end = () => {
          client.destroy()
          upstream.destroy()
        }
        client.on('error', end).on('close', end)
        upstream.on('error', end).on('close', end)
      })
      await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok))
      cleanups.push(
        () =>
          new Promise<void>((ok) => {
            for (const x of open) x.destroy()
            server.close(() => ok())
          }),
      )
      return {
        port: (server.address() as { port: number }).port,
        kill: () => {
          for (const x of open.splice(0)) x.destroy()
        },
      }
    }
  })
})

describe('bad input over WebSockets', () => {
  const config = {
    databases: { shop: { apiKeys: ['shop-key'] }, other: { apiKeys: ['other-key'] } },
    maxPayloadBytes: 64 * 1024,
  }

  async function seeded(): Promise<{ s: ConvergeServer; a: Replica; ws: string }> {
    const s = await start({ config })
    const a = replica('a')
    insert(a, '1', 'milk')
    await a.sync(`${s.url}/db/shop`, { token: 'shop-key' })
    return { s, a, ws: `${s.url.replace('http:', 'ws:')}/db/shop` }
  }

  it('a garbage frame gets a BAD_PAYLOAD error frame and the connection keeps working', async () => {
    const { a, ws: url } = await seeded()
    const before = serverHash()
    const ws = await rawSocket(url, { authorization: 'Bearer shop-key' })
    ws.send(Buffer.from('this is not a payload'))
    const err = await nextMessage(ws)
    expect(err.isBinary).toBe(false)
    expect(JSON.parse(String(err.data))).toMatchObject({ code: 'BAD_PAYLOAD' })
    ws.send('a text frame')
    expect(JSON.parse(String((await nextMessage(ws)).data))).toMatchObject({ code: 'BAD_PAYLOAD' })
    expect(serverHash()).toBe(before)
    // Still usable: a valid payload is answered with a payload.
    ws.send(new Uint8Array(a.exportChanges()))
    const answer = await nextMessage(ws)
    expect(answer.isBinary).toBe(true)
    expect(serverHash()).toBe(before)
  })

  it('with the ack subprotocol: an ack is not an error, any other text is BAD_PAYLOAD, and a stray ack changes nothing', async () => {
    const { a, ws: url } = await seeded()
    const before = serverHash()
    const ws = await rawSocket(url, { authorization: 'Bearer shop-key' }, [ACK_PROTOCOL])
    // Nothing is in flight yet: the ack is ignored (no answer, no error, no write).
    const got: unknown[] = []
    const count = (data: unknown) => got.push(data)
    ws.on('message', count)
    ws.send('ack')
    await new Promise((r) => setTimeout(r, 150))
    ws.off('message', count)
    expect(got).toEqual([])
    ws.send('ACK')
    const err = await nextMessage(ws)
    expect(err.isBinary).toBe(false)
    expect(JSON.parse(String(err.data))).toMatchObject({ code: 'BAD_PAYLOAD' })
    ws.send('ack please')
    expect(JSON.parse(String((await nextMessage(ws)).data))).toMatchObject({ code: 'BAD_PAYLOAD' })
    expect(serverHash()).toBe(before)
    // Still usable: a valid payload is answered with a payload.
    ws.send(new Uint8Array(a.exportChanges()))
    expect((await nextMessage(ws)).isBinary).toBe(true)
    expect(serverHash()).toBe(before)
  })

  it('bad tokens and unknown databases are refused at the upgrade; the session keeps retrying', async () => {
    const { s, ws: url } = await seeded()
    const before = serverHash()
    const bad = connect(replica('b'), url, { token: 'wrong' })
    await waitFor(() => bad.statuses.filter((x) => x.state === 'offline').length >= 2, 'two refusals')
    expect(bad.statuses.find((x) => x.state === 'offline')?.error?.code).toBe('UNAUTHORIZED')
    expect(bad.statuses.map((x) => x.state)).toContain('connecting')
    // A token of another database is no token for this one.
    const other = connect(replica('c'), url, { token: 'other-key' })
    await waitFor(() => other.statuses.some((x) => x.error), 'refusal')
    expect(other.statuses.find((x) => x.error)?.error?.code).toBe('UNAUTHORIZED')
    const none = connect(replica('d'), `${s.url}/db/nope`, { token: 'shop-key' })
    await waitFor(() => none.statuses.some((x) => x.error), 'refusal')
    expect(none.statuses.find((x) => x.error)?.error?.code).toBe('NO_SUCH_DATABASE')
    await expect(rawSocket(url)).rejects.toThrow(/401/)
    // Browsers cannot set headers: the token query parameter works too.
    const viaQuery = await rawSocket(`${url}?token=shop-key`)
    viaQuery.close()
    expect(serverHash()).toBe(before)
  })

  it('a live connection ends when the JWT that opened it expires', async () => {
    const secret = 'a-test-secret-of-at-least-32-characters!'
    const s = await start({ config: { databases: { shop: { jwt: { hs256Secret: secret } } } } })
    const token = await new SignJWT({ sub: 'ann' })
      .setProtectedHeader({ alg: 'HS256' })
      .setAudience('shop')
      .setExpirationTime(Math.floor(Date.now() / 1000) + 2)
      .sign(new TextEncoder().encode(secret))
    const a = replica('a')
    const { session, statuses } = connect(a, `${s.url.replace('http:', 'ws:')}/db/shop`, { token })
    await waitFor(online(session), 'online')
    await waitFor(() => statuses.some((st) => st.error?.code === 'UNAUTHORIZED'), 'UNAUTHORIZED after expiry', 5000)
    expect(statuses.find((st) => st.error?.code === 'UNAUTHORIZED')?.state).toBe('offline')
  })

  it('an oversized frame closes the connection with 1009 and changes nothing', async () => {
    const { ws: url } = await seeded()
    const before = serverHash()
    const ws = await rawSocket(url, { authorization: 'Bearer shop-key' })
    const code = await new Promise<number>((ok) => {
      ws.once('close', (c) => ok(c))
      ws.send(new Uint8Array(100 * 1024))
    })
    expect(code).toBe(1009)
    expect(serverHash()).toBe(before)
  })
})

describe('converge watch', () => {
  it('prints remote changes as they arrive and exits 0 on SIGINT', async () => {
    const s = await start()
    const url = `${s.url}/db/shop`
    replica('a').close()
    replicas = []
    const b = replica('b')
    const child: ChildProcess = spawn(process.execPath, [BIN, 'watch', 'a.db', url.replace('http:', 'ws:')], {
      cwd: dir,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    let err = ''
    child.stdout?.on('data', (d: Buffer) => {
      out += d
    })
    child.stderr?.on('data', (d: Buffer) => {
      err += d
    })
    const exited = new Promise<number | null>((ok) => child.on('exit', (code) => ok(code)))
    cleanups.push(() => child.kill('SIGKILL'))
    await waitFor(() => /^online$/m.test(out), `watch online (stdout: ${out}, stderr: ${err})`)
    insert(b, '1', 'milk')
    insert(b, '2', 'eggs')
    await b.sync(url)
    await waitFor(() => /received 2 rows in todos/.test(out), `the change line (stdout: ${out})`)
    child.kill('SIGINT')
    expect(await exited).toBe(0)
    expect(out.split('\n')[0]).toBe('connecting')
    expect(out).toMatch(/offline\n$/)
    // The watcher merged the rows into its file.
    const a = openReplica(join(dir, 'a.db'))
    replicas.push(a)
    expect(rows(a)).toEqual(rows(b))
  })
})
