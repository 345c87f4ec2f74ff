// The sync server and Replica.sync over real HTTP on a free loopback port.
import { spawn } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { SignJWT } from 'jose'
import { pino } from 'pino'
import { ConvergeError, openReplica, type Replica } from 'sqlite-converge'
import { type ConvergeServer, createServer, type ServerOptions } from 'sqlite-converge/server'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { fileHash } from './helpers/db-hash.js'
import { capture } from './helpers/logs.js'

const BIN = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js')
const TODOS = 'CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT, done INTEGER)'
const SECRET = 'a-test-secret-of-at-least-32-characters!'

let dir: string
let servers: ConvergeServer[]
let replicas: Replica[]

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'converge-server-'))
  servers = []
  replicas = []
})

afterEach(async () => {
  for (const s of servers) await s.close()
  for (const r of replicas) r.close()
  rmSync(dir, { recursive: true, force: true })
})

const silent = pino({ level: 'silent' })

async function start(options: ServerOptions = {}): Promise<ConvergeServer> {
  const s = await createServer({ port: 0, data: join(dir, 'data'), logger: silent, ...options })
  servers.push(s)
  return s
}

function replica(name: string, ddl = TODOS): Replica {
  const r = openReplica(join(dir, `${name}.db`))
  r.db.exec(ddl)
  r.enableSync('todos')
  replicas.push(r)
  return r
}

function rows(r: Replica): unknown[] {
  return r.db.prepare('SELECT * FROM todos ORDER BY id').all()
}

/** Digest of the server's database file, read-only. */
function serverHash(name = 'shop'): string {
  return fileHash(join(dir, 'data', `${name}.db`))
}

async function post(url: string, body: Uint8Array | string, headers: Record<string, string> = {}) {
  // A copy: exports live in a resizable ArrayBuffer, which fetch refuses.
  const res = await fetch(url, {
    method: 'POST',
    body: typeof body === 'string' ? body : new Uint8Array(body),
    headers,
  })
  const text = await res.text()
  return { status: res.status, json: text.startsWith('{') ? JSON.parse(text) : text }
}

async function rejects(p: Promise<unknown>, code: string): Promise<ConvergeError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(err).toBeInstanceOf(ConvergeError)
  expect((err as ConvergeError).code).toBe(code)
  return err as ConvergeError
}

describe('sync through the server', () => {
  it('three replicas converge: concurrent edits, deletes, a conflict, offline edits', async () => {
    const s = await start()
    const url = `${s.url}/db/shop`
    const [a, b, c] = [replica('a'), replica('b'), replica('c')]
    a.db.prepare('INSERT INTO todos VALUES (?, ?, ?)').run('1', 'milk', 0)
    a.db.prepare('INSERT INTO todos VALUES (?, ?, ?)').run('2', 'eggs', 0)
    const first = await a.sync(url)
    expect(first.send).toMatchObject({ status: 'synced', rows: 2 })
    expect(first.send.localVersion).toBeGreaterThan(0)
    expect(first.send.serverVersion).toBe(first.send.localVersion)
    expect(first.receive).toEqual({ rows: 0, applied: 0, conflicts: 0, tables: [] })
    const got = await b.sync(url.replace('http:', 'ws:'))
    expect(got.receive).toMatchObject({ rows: 2, tables: ['todos'] })
    await c.sync(url)
    expect(rows(b)).toEqual(rows(a))
    expect(rows(c)).toEqual(rows(a))

    // Concurrent edits: b and c write the same cell (a conflict), a deletes a row, c adds one.
    b.db.prepare("UPDATE todos SET title = 'oat milk' WHERE id = '1'").run()
    await new Promise((r) => setTimeout(r, 5))
    c.db.prepare("UPDATE todos SET title = 'soy milk' WHERE id = '1'").run()
    a.db.prepare("DELETE FROM todos WHERE id = '2'").run()
    c.db.prepare('INSERT INTO todos VALUES (?, ?, ?)').run('3', 'bread', 1)
    b.db.prepare("UPDATE todos SET done = 1 WHERE id = '1'").run()
    for (const r of [b, c, a, b, c]) await r.sync(url)
    expect(rows(a)).toEqual([
      { id: '1', title: 'soy milk', done: 1 },
      { id: '3', title: 'bread', done: 1 },
    ])
    expect(rows(b)).toEqual(rows(a))
    expect(rows(c)).toEqual(rows(a))
    expect([...b.conflicts(), ...c.conflicts()].map((x) => [x.kept, x.lost])).toContainEqual(['soy milk', 'oat milk'])

    // Offline edits on two replicas merge on the next sync.
    a.db.prepare('INSERT INTO todos VALUES (?, ?, ?)').run('4', 'tea', 0)
    b.db.prepare("UPDATE todos SET done = 0 WHERE id = '3'").run()
    for (const r of [a, b, c, a]) await r.sync(url)
    expect(rows(a)).toEqual(rows(b))
    expect(rows(c)).toEqual(rows(a))
    expect(rows(a)).toHaveLength(3)

    // Nothing new: a second round sends and receives nothing.
    for (const r of [a, b, c]) {
      const again = await r.sync(url)
      expect(again.send.rows).toBe(0)
      expect(again.receive.rows).toBe(0)
    }
  })

  it('a server restarted on the same data directory loses nothing', async () => {
    let s = await start()
    const a = replica('a')
    const b = replica('b')
    a.db.prepare('INSERT INTO todos VALUES (?, ?, ?)').run('1', 'milk', 0)
    await a.sync(`${s.url}/db/shop`)
    await s.close()
    // Same data directory and port: the client's memory of the server (by URL) still holds.
    s = await start({ port: Number(new URL(s.url).port) })
    a.db.prepare('INSERT INTO todos VALUES (?, ?, ?)').run('2', 'eggs', 0)
    expect((await a.sync(`${s.url}/db/shop`)).send.rows).toBe(1)
    const got = await b.sync(`${s.url}/db/shop`)
    expect(got.receive.rows).toBe(2)
    expect(rows(b)).toEqual(rows(a))
  })
})

describe('a client with an added column', () => {
  /** The server's columns of todos, read from its file without disturbing it. */
  function serverColumns(name = 'shop'): string[] {
    const db = new Database(join(dir, 'data', `${name}.db`), { readonly: true, fileMustExist: true })
    try {
      return db.prepare(`SELECT name FROM pragma_table_info('todos')`).pluck().all() as string[]
    } finally {
      db.close()
    }
  }

  /** a: the old schema. b: created with the column. c: added it before enabling sync. */
  function clients() {
    return {
      a: replica('a'),
      b: replica('b', 'CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT, done INTEGER, due TEXT)'),
      c: replica('c', `${TODOS}; ALTER TABLE todos ADD COLUMN due TEXT`),
    }
  }

  it('syncs through the server with a client without it; the server gains the column', async () => {
    const s = await start()
    const url = `${s.url}/db/shop`
    const { a, b, c } = clients()

    // The old client defines the server's table.
    await a.sync(url)
    expect(serverColumns()).toEqual(['id', 'title', 'done'])
    b.db.prepare('INSERT INTO todos VALUES (?, ?, ?, ?)').run('2', 'eggs', 0, 'today')
    expect((await b.sync(url)).send.status).toBe('synced')
    expect(serverColumns()).toEqual(['id', 'title', 'done', 'due'])

    // a gets b's row without the column it lacks; c, which has it, gets b's value of it.
    await a.sync(url)
    expect(rows(a)).toEqual([{ id: '2', title: 'eggs', done: 0 }])
    await c.sync(url)
    expect(rows(c)).toEqual([{ id: '2', title: 'eggs', done: 0, due: 'today' }])

    // Edits of the shared columns travel both ways between old and new clients, edits of
    // the added column between the clients that have it, and none of them conflict.
    a.db.prepare(`UPDATE todos SET title = 'brown eggs' WHERE id = '2'`).run()
    b.db.prepare(`UPDATE todos SET due = 'tomorrow' WHERE id = '2'`).run()
    c.db.prepare(`UPDATE todos SET done = 1 WHERE id = '2'`).run()
    b.db.prepare('INSERT INTO todos VALUES (?, ?, ?, ?)').run('3', 'bread', 0, 'monday')
    // A row the old client creates: the clients with the column give it the default.
    a.db.prepare('INSERT INTO todos VALUES (?, ?, ?)').run('4', 'tea', 0)
    for (const r of [a, b, c, a, b]) await r.sync(url)
    const full = [
      { id: '2', title: 'brown eggs', done: 1, due: 'tomorrow' },
      { id: '3', title: 'bread', done: 0, due: 'monday' },
      { id: '4', title: 'tea', done: 0, due: null },
    ]
    expect(rows(b)).toEqual(full)
    expect(rows(c)).toEqual(full)
    expect(rows(a)).toEqual(full.map(({ due: _, ...row }) => row))
    for (const r of [a, b, c]) expect(r.conflicts()).toEqual([])
  })

  it('rows the server held before it gained the column reach the clients with it, which default it', async () => {
    const s = await start()
    const url = `${s.url}/db/shop`
    const { a, b, c } = clients()
    a.db.prepare('INSERT INTO todos VALUES (?, ?, ?)').run('1', 'milk', 0)
    await a.sync(url)
    b.db.prepare('INSERT INTO todos VALUES (?, ?, ?, ?)').run('2', 'eggs', 0, 'today')
    await b.sync(url)
    expect(serverColumns()).toEqual(['id', 'title', 'done', 'due'])
    for (const r of [a, b, c]) await r.sync(url)
    const full = [
      { id: '1', title: 'milk', done: 0, due: null },
      { id: '2', title: 'eggs', done: 0, due: 'today' },
    ]
    expect(rows(c)).toEqual(full)
    expect(rows(b)).toEqual(full)
    expect(rows(a)).toEqual(full.map(({ due: _, ...row }) => row))
  })
})

describe('bad requests change nothing and the server keeps serving', () => {
  const config = {
    databases: {
      shop: { apiKeys: ['shop-key'], jwt: { hs256Secret: SECRET } },
      blog: { apiKeys: ['blog-key'] },
    },
    maxPayloadBytes: 64 * 1024,
  }

  it('answers each bad request with its status and code', async () => {
    const s = await start({ config })
    const url = `${s.url}/db/shop`
    const good = replica('good')
    good.db.prepare('INSERT INTO todos VALUES (?, ?, ?)').run('1', 'milk', 0)
    await good.sync(url, { token: 'shop-key' })
    const auth = { authorization: 'Bearer shop-key' }
    const valid = good.exportChanges({})

    const expired = await new SignJWT({ sub: 'ann' })
      .setProtectedHeader({ alg: 'HS256' })
      .setAudience('shop')
      .setExpirationTime(Math.floor(Date.now() / 1000) - 60)
      .sign(new TextEncoder().encode(SECRET))
    const wrongSchema = openReplica(join(dir, 'wrong.db'))
    replicas.push(wrongSchema)
    // done is TEXT here and INTEGER on the server: a shared column of another type.
    wrongSchema.db.exec('CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT, done TEXT)')
    wrongSchema.enableSync('todos')
    wrongSchema.db.prepare('INSERT INTO todos VALUES (?, ?, ?)').run('9', 'x', 'y')

    const cases: [
      string,
      () => Promise<{ status: number; json: { code: string; message: string } }>,
      number,
      string,
    ][] = [
      ['garbage', () => post(url, 'hello there', auth), 400, 'BAD_PAYLOAD'],
      ['truncated', () => post(url, valid.subarray(0, valid.length - 10), auth), 400, 'BAD_PAYLOAD'],
      ['huge', () => post(url, new Uint8Array(200 * 1024), auth), 413, 'PAYLOAD_TOO_LARGE'],
      ['wrong schema', () => post(url, wrongSchema.exportChanges({}), auth), 409, 'SCHEMA_MISMATCH'],
      ['no token', () => post(url, valid), 401, 'UNAUTHORIZED'],
      ['bad token', () => post(url, valid, { authorization: 'Bearer nope' }), 401, 'UNAUTHORIZED'],
      ['expired JWT', () => post(url, valid, { authorization: `Bearer ${expired}` }), 401, 'UNAUTHORIZED'],
      ['other database', () => post(url, valid, { authorization: 'Bearer blog-key' }), 401, 'UNAUTHORIZED'],
      ['unknown database', () => post(`${s.url}/db/nope`, valid, auth), 404, 'NO_SUCH_DATABASE'],
    ]
    for (const [what, run, status, code] of cases) {
      const before = serverHash()
      const r = await run()
      expect([what, r.status, r.json.code]).toEqual([what, status, code])
      expect(typeof r.json.message).toBe('string')
      if (code === 'SCHEMA_MISMATCH') expect(r.json.message).toMatch(/\btodos\b.*\bdone\b/)
      expect(serverHash(), what).toBe(before)
      // Still serving a good client.
      const other = replica(`ok-${replicas.length}`)
      other.db.prepare('INSERT INTO todos VALUES (?, ?, ?)').run('1', 'milk', 0)
      expect((await other.sync(url, { token: 'shop-key' })).send.status).toBe('synced')
      expect(rows(other)).toEqual(rows(good))
    }

    // The client maps codes to ConvergeError.
    const err = await rejects(wrongSchema.sync(url, { token: 'shop-key' }), 'SCHEMA_MISMATCH')
    expect(err.message).toMatch(/\btodos\b.*\bdone\b/)
    await rejects(good.sync(url), 'UNAUTHORIZED')
    await rejects(good.sync(url, { token: expired }), 'UNAUTHORIZED')
    await rejects(good.sync('http://127.0.0.1:1/db/shop'), 'NETWORK')
    await rejects(good.sync('ftp://127.0.0.1/db/shop'), 'BAD_ARGUMENT')
  })

  it('accepts valid JWTs: HS256 and EdDSA, audience bound to the database', async () => {
    const { publicKey, privateKey } = generateKeyPairSync('ed25519')
    const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString()
    const s = await start({ config: { databases: { shop: { jwt: { hs256Secret: SECRET, publicKeys: [pem] } } } } })
    const a = replica('a')
    const hs = await new SignJWT({ sub: 'ann' })
      .setProtectedHeader({ alg: 'HS256' })
      .setAudience('shop')
      .setExpirationTime('5m')
      .sign(new TextEncoder().encode(SECRET))
    const ed = await new SignJWT({ sub: 'bob' })
      .setProtectedHeader({ alg: 'EdDSA' })
      .setAudience('shop')
      .setExpirationTime('5m')
      .sign(privateKey)
    const noExp = await new SignJWT({ sub: 'bob' })
      .setProtectedHeader({ alg: 'EdDSA' })
      .setAudience('shop')
      .sign(privateKey)
    const otherDb = await new SignJWT({ sub: 'bob' })
      .setProtectedHeader({ alg: 'EdDSA' })
      .setAudience('blog')
      .setExpirationTime('5m')
      .sign(privateKey)
    expect((await a.sync(`${s.url}/db/shop`, { token: hs })).send.status).toBe('synced')
    expect((await a.sync(`${s.url}/db/shop`, { token: ed })).send.status).toBe('synced')
    await rejects(a.sync(`${s.url}/db/shop`, { token: noExp }), 'UNAUTHORIZED')
    await rejects(a.sync(`${s.url}/db/shop`, { token: otherDb }), 'UNAUTHORIZED')
  })

  it('rate limits with 429 RATE_LIMITED', async () => {
    const s = await start({ config: { rateLimit: { requestsPerMinute: 3 } } })
    const a = replica('a')
    for (let i = 0; i < 3; i++) await a.sync(`${s.url}/db/shop`)
    const r = await post(`${s.url}/db/shop`, a.exportChanges({}))
    expect([r.status, r.json.code]).toEqual([429, 'RATE_LIMITED'])
    await rejects(a.sync(`${s.url}/db/shop`), 'RATE_LIMITED')
  })

  it('refuses a chunked body over the limit while streaming', async () => {
    const s = await start({ config: { maxPayloadBytes: 1024 } })
    const u = new URL(`${s.url}/db/shop`)
    const status = await new Promise<number>((ok, fail) => {
      const req = request({ host: u.hostname, port: u.port, path: u.pathname, method: 'POST' }, (res) => {
        res.resume()
        ok(res.statusCode ?? 0)
      })
      req.on('error', fail)
      req.write(new Uint8Array(800))
      req.end(new Uint8Array(800))
    })
    expect(status).toBe(413)
  })
})

describe('operations', () => {
  it('serves /health, /metrics and an escaped status page', async () => {
    const s = await start()
    const a = replica('a')
    a.db.prepare('INSERT INTO todos VALUES (?, ?, ?)').run('1', 'milk', 0)
    const hostile = '<script>alert(1)</script>'
    a.db.exec(`CREATE TABLE "${hostile}" (k TEXT PRIMARY KEY)`)
    a.enableSync(hostile)
    await a.sync(`${s.url}/db/shop`)
    await post(`${s.url}/db/shop`, 'garbage')

    const health = await fetch(`${s.url}/health`)
    expect([health.status, await health.json()]).toEqual([200, { status: 'ok' }])

    const metrics = await (await fetch(`${s.url}/metrics`)).text()
    expect(metrics).toMatch(/^converge_sync_requests_total\{db="shop",status="200"\} 1$/m)
    expect(metrics).toMatch(/^converge_sync_requests_total\{db="shop",status="400"\} 1$/m)
    expect(metrics).toMatch(/^converge_changes_received_total 1$/m)
    expect(metrics).toMatch(/^converge_changes_sent_total 0$/m)
    expect(metrics).toMatch(/^converge_bytes_received_total [1-9]/m)
    expect(metrics).toMatch(/^converge_bytes_sent_total [1-9]/m)
    expect(metrics).toMatch(/^converge_errors_total\{code="BAD_PAYLOAD"\} 1$/m)
    expect(metrics).toMatch(/^converge_apply_seconds_count 1$/m)
    expect(metrics).toMatch(/^converge_apply_seconds_bucket\{le="\+Inf"\} 1$/m)

    const page = await fetch(`${s.url}/`)
    expect(page.headers.get('content-type')).toMatch(/text\/html/)
    const html = await page.text()
    expect(html).toContain('shop')
    expect(html).toContain(a.siteId)
    expect(html).not.toContain(hostile)
    expect(html).toContain('&lt;script&gt;alert(1)&lt;/script&gt;')
  })

  it('logs one line per sync', async () => {
    const { logger, lines } = capture()
    const s = await start({ logger })
    const a = replica('a')
    a.db.prepare('INSERT INTO todos VALUES (?, ?, ?)').run('1', 'milk', 0)
    await a.sync(`${s.url}/db/shop`)
    const sync = lines.filter((l) => l.msg === 'sync')
    expect(sync).toHaveLength(1)
    expect(sync[0]).toMatchObject({ db: 'shop', client: a.siteId, changesIn: 1, changesOut: 0 })
    expect(typeof sync[0]?.ms).toBe('number')
  })

  it('refuses a bad liveIntervalMs with BAD_ARGUMENT before listening', async () => {
    for (const liveIntervalMs of [-1, Number.NaN, Number.POSITIVE_INFINITY]) {
      await expect(
        createServer({ port: 0, data: join(dir, 'data'), logger: silent, liveIntervalMs }),
      ).rejects.toMatchObject({ code: 'BAD_ARGUMENT', details: { liveIntervalMs } })
    }
  })

  it('is secure by default', async () => {
    await expect(
      createServer({ host: '0.0.0.0', port: 0, data: join(dir, 'data'), logger: silent }),
    ).rejects.toMatchObject({ code: 'BAD_ARGUMENT' })
    await expect(
      createServer({
        host: '0.0.0.0',
        port: 0,
        data: join(dir, 'data'),
        logger: silent,
        config: { databases: { shop: { apiKeys: ['k'] }, open: {} } },
      }),
    ).rejects.toMatchObject({ code: 'BAD_ARGUMENT' })
    const { logger, lines } = capture()
    await start({ logger })
    expect(lines.some((l) => l.level === 40 && /no credentials/.test(String(l.msg)))).toBe(true)
    const withKeys = capture()
    await start({ logger: withKeys.logger, config: { databases: { shop: { apiKeys: ['k'] } } } })
    expect(withKeys.lines.some((l) => l.level === 40)).toBe(false)
  })
})

describe('command line', () => {
  it('converge serve and converge sync end to end', async () => {
    writeFileSync(join(dir, 'converge.json'), JSON.stringify({ databases: { shop: { apiKeys: ['cli-key'] } } }))
    const child = spawn(
      process.execPath,
      [BIN, 'serve', '--port', '0', '--data', join(dir, 'data'), '--config', join(dir, 'converge.json')],
      { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] },
    )
    try {
      const url = await new Promise<string>((ok, fail) => {
        let out = ''
        child.stdout.on('data', (d: Buffer) => {
          out += d
          const m = /listening on (http:\/\/\S+)/.exec(out)
          if (m?.[1]) ok(m[1])
        })
        child.once('exit', (code) => fail(new Error(`serve exited with ${code}`)))
      })
      const run = (...args: string[]) =>
        new Promise<{ code: number | null; stdout: string; stderr: string }>((ok) => {
          const p = spawn(process.execPath, [BIN, ...args], { cwd: dir })
          let stdout = ''
          let stderr = ''
          p.stdout.on('data', (d: Buffer) => {
            stdout += d
          })
          p.stderr.on('data', (d: Buffer) => {
            stderr += d
          })
          p.on('close', (code) => ok({ code, stdout, stderr }))
        })
      const a = replica('a')
      a.db.prepare('INSERT INTO todos VALUES (?, ?, ?)').run('1', 'milk', 0)
      a.close()
      replica('b').close()
      replicas = []
      const sent = await run('sync', 'a.db', `${url}/db/shop`, '--token', 'cli-key')
      expect(sent.code, sent.stderr).toBe(0)
      expect(sent.stdout).toMatch(/^synced: sent 1 row, received 0 rows/)
      const got = await run('sync', 'b.db', `${url}/db/shop`, '--token', 'cli-key', '--json')
      expect(got.code, got.stderr).toBe(0)
      expect(JSON.parse(got.stdout)).toMatchObject({
        send: { status: 'synced' },
        receive: { rows: 1, tables: ['todos'] },
      })
      const again = await run('sync', 'b.db', `${url}/db/shop`, '--token', 'cli-key')
      expect(again.stdout).toMatch(/^synced: sent 0 rows, received 0 rows/)
      const denied = await run('sync', 'b.db', `${url}/db/shop`, '--token', 'wrong')
      expect(denied.code).toBe(1)
      expect(denied.stderr).toMatch(/^error UNAUTHORIZED: /)
      const open = await run('serve', '--host', '0.0.0.0', '--port', '0', '--data', join(dir, 'data2'))
      expect(open.code).toBe(1)
      expect(open.stderr).toMatch(/^error BAD_ARGUMENT: refusing to listen on 0\.0\.0\.0/)
    } finally {
      child.kill('SIGTERM')
      await new Promise((ok) => child.once('exit', ok))
    }
  }, 30_000)
})
