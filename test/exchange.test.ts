/**
 * Exchange between replicas: relays, duplicated / reordered / stale payloads, payloads
 * exported for another peer, clock drift, the conflict log and its resolution, and the
 * delete / re-insert rules. Every scenario ends by checking convergence.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { ConvergeError, openReplica, type Replica } from 'sqlite-converge'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { columnRows, dbHash } from './helpers/db-hash.js'
import { codeOf, prng, sync } from './helpers/replicas.js'

/** The replica's connection with its better-sqlite3 type (the API types it structurally). */
const conn = (r: Replica): Database.Database => r.db as Database.Database

const TODOS = 'CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT, done INTEGER, data BLOB)'
const TODO_DATA_COLUMNS = 3

// Fixed site ids in increasing order (ties on equal clocks go to the higher id).
const S = ['1a'.repeat(16), '2b'.repeat(16), '3c'.repeat(16), '4d'.repeat(16), '5e'.repeat(16)] as const

const open: Replica[] = []
afterEach(() => {
  for (const r of open.splice(0)) if (conn(r).open) r.close()
})

let dir: string
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'converge-exchange-'))
})
afterAll(() => {
  rmSync(dir, { recursive: true, force: true })
})

function replica(siteId?: string, ddl = TODOS, tables = ['todos'], options = {}): Replica {
  const r = openReplica(':memory:', { ...(siteId ? { siteId } : {}), ...options })
  open.push(r)
  conn(r).exec(ddl)
  for (const t of tables) r.enableSync(t)
  return r
}

function syncBoth(a: Replica, b: Replica): void {
  sync(a, b)
  sync(b, a)
}

function rows(r: Replica, table = 'todos'): string[] {
  return columnRows(r.db as Database.Database, table)
}

function expectConverged(replicas: Replica[], tables = ['todos']): void {
  const [first, ...others] = replicas
  for (const t of tables)
    for (const r of others) expect(rows(r, t), `${r.siteId} vs ${first?.siteId}`).toEqual(rows(first as Replica, t))
}

function title(r: Replica, id: string): unknown {
  return conn(r).prepare('SELECT title FROM todos WHERE id = ?').pluck().get(id)
}

/** Lets the wall clock move on, so the next write has a strictly later HLC. */
function tick(ms = 3): void {
  const end = Date.now() + ms
  while (Date.now() < end) {
    // busy wait: the HLC is wall-clock milliseconds
  }
}

// ---------------------------------------------------------------------------------------

describe('relays', () => {
  it("A -> B -> C: C gets A's rows without ever meeting A, and C's rows travel back", () => {
    const [a, b, c] = [replica(S[0]), replica(S[1]), replica(S[2])]
    conn(a).exec(`INSERT INTO todos VALUES ('a1', 'from a', 0, x'aa'), ('a2', 'also a', 1, NULL)`)
    sync(a, b)
    conn(b).exec(`INSERT INTO todos VALUES ('b1', 'from b', 0, NULL); UPDATE todos SET done = 1 WHERE id = 'a1'`)
    sync(b, c)
    expectConverged([b, c])
    expect(title(c, 'a1')).toBe('from a')
    expect(c.versionVector()).toEqual(b.versionVector())
    expect(Object.keys(c.versionVector()).sort()).toEqual([a.siteId, b.siteId].sort())
    // C edits; the edit reaches A only through B.
    conn(c).exec(`UPDATE todos SET title = 'edited by c' WHERE id = 'a2'; DELETE FROM todos WHERE id = 'b1'`)
    sync(c, b)
    sync(b, a)
    expectConverged([a, b, c])
    expect(title(a, 'a2')).toBe('edited by c')
    expect(a.versionVector()).toEqual(c.versionVector())
  })

  it('a longer chain and a ring converge', () => {
    const rs = S.map((s) => replica(s))
    rs.forEach((r, i) => {
      conn(r).prepare('INSERT INTO todos VALUES (?, ?, ?, NULL)').run(`r${i}`, `row of ${i}`, BigInt(i))
    })
    // Chain 0 -> 1 -> 2 -> 3 -> 4, then the ring back 4 -> 0 -> 1 -> 2 -> 3.
    for (let i = 0; i < rs.length - 1; i++) sync(rs[i] as Replica, rs[i + 1] as Replica)
    for (let i = 0; i < rs.length - 1; i++) sync(rs[(i + rs.length - 1) % rs.length] as Replica, rs[i] as Replica)
    expectConverged(rs)
    expect(rows(rs[0] as Replica)).toHaveLength(rs.length)
    const vector = (rs[0] as Replica).versionVector()
    for (const r of rs) expect(r.versionVector()).toEqual(vector)
  })
})

// ---------------------------------------------------------------------------------------

describe('duplicated, reordered and stale payloads', () => {
  it('importing the same payload twice: applied 0 the second time, database unchanged', () => {
    const [a, b] = [replica(S[0]), replica(S[1])]
    conn(b).exec(`INSERT INTO todos VALUES ('x', 'b', 0, NULL)`)
    sync(b, a)
    conn(a).exec(`INSERT INTO todos VALUES ('a1', 't', 0, x'00'); UPDATE todos SET title = 'a' WHERE id = 'x'`)
    conn(b).exec(`UPDATE todos SET title = 'b again' WHERE id = 'x'`)
    const payload = a.exportChanges(b.versionVector())
    const first = b.importChanges(payload)
    expect(first.applied).toBeGreaterThan(0)
    const hash = dbHash(conn(b))
    const conflicts = b.conflicts()
    expect(b.importChanges(payload)).toEqual({ applied: 0, conflicts: 0 })
    expect(b.importChanges(payload)).toEqual({ applied: 0, conflicts: 0 })
    expect(dbHash(conn(b))).toBe(hash)
    expect(b.conflicts()).toEqual(conflicts)
    // A full export (since = {}) of already known changes also changes nothing.
    expect(b.importChanges(a.exportChanges())).toEqual({ applied: 0, conflicts: 0 })
    expect(dbHash(conn(b))).toBe(hash)
  })

  it("a replica's own payload is a no-op", () => {
    const a = replica(S[0])
    conn(a).exec(`INSERT INTO todos VALUES ('a1', 't', 0, NULL)`)
    const payload = a.exportChanges()
    conn(a).exec(`UPDATE todos SET title = 'newer' WHERE id = 'a1'`)
    a.versionVector()
    const hash = dbHash(conn(a))
    expect(a.importChanges(payload)).toEqual({ applied: 0, conflicts: 0 })
    expect(dbHash(conn(a))).toBe(hash)
    expect(title(a, 'a1')).toBe('newer')
  })

  it('payloads imported out of order, repeatedly, and with stale vectors converge', () => {
    const [a, b] = [replica(S[0]), replica(S[1])]
    const v0 = b.versionVector()
    conn(a).exec(`INSERT INTO todos VALUES ('1', 'one', 0, NULL), ('2', 'two', 0, NULL), ('3', 'three', 0, NULL)`)
    const p1 = a.exportChanges(v0)
    tick()
    conn(a).exec(`UPDATE todos SET title = 'ONE' WHERE id = '1'; DELETE FROM todos WHERE id = '2'`)
    const p2 = a.exportChanges(v0) // stale: exported for the empty vector after more changes
    tick()
    conn(a).exec(`INSERT INTO todos VALUES ('2', 'two reborn', 1, x'02'); UPDATE todos SET done = 1 WHERE id = '3'`)
    const p3 = a.exportChanges({ [a.siteId]: 1 })
    const p4 = a.exportChanges(a.versionVector()) // nothing new
    // Newest first, then older ones, then again.
    for (const p of [p3, p1, p2, p4, p1, p3, p2]) b.importChanges(p)
    expectConverged([a, b])
    expect(title(b, '1')).toBe('ONE')
    expect(title(b, '2')).toBe('two reborn')
    expect(b.versionVector()).toEqual(a.versionVector())
    // An old payload arriving late does not roll anything back.
    expect(b.importChanges(p1)).toEqual({ applied: 0, conflicts: 0 })
    expectConverged([a, b])
  })

  it('a stale since only resends what the receiver already has; the new changes count once', () => {
    const [a, b] = [replica(S[0]), replica(S[1])]
    conn(a).exec(`INSERT INTO todos VALUES ('1', 'one', 0, NULL)`)
    const old = b.versionVector()
    sync(a, b)
    conn(a).exec(`UPDATE todos SET title = 'uno' WHERE id = '1'; INSERT INTO todos VALUES ('2', 'two', 0, NULL)`)
    expect(b.importChanges(a.exportChanges(old))).toEqual({ applied: 1 + (1 + TODO_DATA_COLUMNS), conflicts: 0 })
    expectConverged([a, b])
  })

  it('random exchanges with duplicates, reordering, stale and foreign vectors converge (seeded)', () => {
    const DDL = `CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT, done INTEGER, data BLOB);
      CREATE TABLE notes (k INTEGER, sub TEXT, body TEXT NOT NULL, n, PRIMARY KEY (sub, k))`
    const tables = ['todos', 'notes']
    for (const seed of [1, 2, 3, 4]) {
      const rand = prng(seed)
      const int = (n: number) => Math.floor(rand() * n)
      const rs = S.slice(0, 4).map((s) => replica(s, DDL, tables))
      const vectorsSeen: Record<string, number>[] = [{}]
      const payloads: Uint8Array[] = []
      const values = [null, 0n, 1n, 2n ** 60n, 1.5, 'x', '', Buffer.from([1, 2]), Buffer.alloc(0)]
      for (let step = 0; step < 250; step++) {
        const r = rs[int(rs.length)] as Replica
        const op = int(10)
        const id = `k${int(6)}`
        if (op < 5) {
          const k = BigInt(int(4))
          const sub = ['a', 'b'][int(2)] as string
          switch (int(7)) {
            case 0:
              r.db
                .prepare('INSERT OR REPLACE INTO todos VALUES (?, ?, ?, ?)')
                .run(id, `t${step}`, BigInt(step), values[int(values.length)])
              break
            case 1:
              conn(r).prepare('UPDATE todos SET title = ? WHERE id = ?').run(`u${step}`, id)
              break
            case 2:
              conn(r).prepare('DELETE FROM todos WHERE id = ?').run(id)
              break
            case 3:
              conn(r)
                .prepare('UPDATE OR REPLACE todos SET id = ? WHERE id = ?')
                .run(`k${int(6)}`, id)
              break
            case 4:
              r.db
                .prepare('INSERT OR REPLACE INTO notes VALUES (?, ?, ?, ?)')
                .run(k, sub, `b${step}`, values[int(values.length)])
              break
            case 5:
              r.db
                .prepare('UPDATE notes SET n = ?, body = ? WHERE k = ? AND sub = ?')
                .run(values[int(values.length)], `e${step}`, k, sub)
              break
            default:
              conn(r).prepare('DELETE FROM notes WHERE k = ? AND sub = ?').run(k, sub)
          }
        } else if (op < 9) {
          const to = rs[int(rs.length)] as Replica
          if (to === r) continue
          const choice = int(4)
          const since =
            choice === 0
              ? to.versionVector()
              : choice === 1
                ? (vectorsSeen[int(vectorsSeen.length)] as Record<string, number>)
                : choice === 2
                  ? (rs[int(rs.length)] as Replica).versionVector() // a vector of some other replica
                  : {}
          const p = r.exportChanges(since)
          payloads.push(p)
          to.importChanges(p)
          vectorsSeen.push(to.versionVector())
        } else if (payloads.length) {
          // Redeliver an old payload to anyone.
          ;(rs[int(rs.length)] as Replica).importChanges(payloads[int(payloads.length)] as Uint8Array)
        }
      }
      // Two rounds of full pairwise exchange with each receiver's own vector.
      for (let round = 0; round < 2; round++) for (const x of rs) for (const y of rs) if (x !== y) sync(x, y)
      expectConverged(rs, tables)
      const vector = (rs[0] as Replica).versionVector()
      for (const r of rs) expect(r.versionVector()).toEqual(vector)
      for (const r of rs) r.close()
    }
  })
})

// ---------------------------------------------------------------------------------------

describe('a payload exported for another peer', () => {
  for (const [label, ddl] of [
    ['plain columns', TODOS],
    [
      'NOT NULL columns',
      'CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT NOT NULL, done INTEGER NOT NULL, data BLOB NOT NULL)',
    ],
  ] as const) {
    it(`does not make the receiver skip changes later (${label})`, () => {
      const [a, b, c] = [replica(S[0], ddl), replica(S[1], ddl), replica(S[2], ddl)]
      conn(a).exec(`INSERT INTO todos VALUES ('old1', 'o1', 0, x''), ('old2', 'o2', 0, x'')`)
      sync(a, b) // b knows more than c
      tick()
      conn(a).exec(`UPDATE todos SET title = 'o1 edited' WHERE id = 'old1'; DELETE FROM todos WHERE id = 'old2';
        INSERT INTO todos VALUES ('new', 'n', 1, x'01')`)
      // c receives what b lacked, not what c lacks.
      const forB = a.exportChanges(b.versionVector())
      const hashBefore = dbHash(conn(c))
      c.importChanges(forB)
      expect(dbHash(conn(c))).not.toBe(hashBefore)
      // Whatever c did with it, it must not claim to have seen all of a's changes.
      const vc = c.versionVector()
      expect(vc[a.siteId] === undefined || (vc[a.siteId] as number) < (a.versionVector()[a.siteId] as number)).toBe(
        true,
      )
      // A normal exchange then brings c everything.
      sync(a, c)
      expectConverged([a, c])
      expect(title(c, 'old1')).toBe('o1 edited')
      expect(rows(c)).toHaveLength(2)
      expect(c.versionVector()).toEqual(a.versionVector())
      // And c can serve as a relay to a fresh replica.
      const d = replica(S[3], ddl)
      sync(c, d)
      expectConverged([a, d])
    })
  }

  it('relayed through a peer that itself only got a partial payload, everyone still converges', () => {
    const [a, b, c, d] = [replica(S[0]), replica(S[1]), replica(S[2]), replica(S[3])]
    conn(a).exec(`INSERT INTO todos VALUES ('1', 'one', 0, NULL)`)
    sync(a, b)
    conn(a).exec(`UPDATE todos SET title = 'uno' WHERE id = '1'; INSERT INTO todos VALUES ('2', 'two', 0, NULL)`)
    c.importChanges(a.exportChanges(b.versionVector()))
    sync(c, d)
    sync(b, d)
    sync(a, d)
    sync(d, c)
    expectConverged([a, c, d])
    sync(a, b)
    expectConverged([a, b, c, d])
  })
})

// ---------------------------------------------------------------------------------------

describe('clock drift', () => {
  it('a receiver that allows no drift at all (negative limit) refuses with CLOCK_DRIFT and changes nothing', () => {
    const a = replica(S[0])
    conn(a).exec(`INSERT INTO todos VALUES ('1', 'one', 0, NULL)`)
    const strict = replica(S[1], TODOS, ['todos'], { maxClockDriftMs: -3_600_000 })
    conn(strict).exec(`INSERT INTO todos VALUES ('local', 'l', 0, NULL)`)
    strict.versionVector()
    const hash = dbHash(conn(strict))
    let err: ConvergeError | undefined
    try {
      strict.importChanges(a.exportChanges())
    } catch (e) {
      err = e as ConvergeError
    }
    expect(err).toBeInstanceOf(ConvergeError)
    expect(err?.code).toBe('CLOCK_DRIFT')
    expect(err?.details.site).toBe(a.siteId)
    expect(dbHash(conn(strict))).toBe(hash)
  })

  function fastClockSender(aheadMs: number): { sender: Replica; file: string } {
    const file = join(dir, `fast-${aheadMs}-${Math.random().toString(36).slice(2)}.db`)
    const first = openReplica(file, { siteId: S[4] })
    conn(first).exec(TODOS)
    first.enableSync('todos')
    first.close()
    const raw = new Database(file)
    raw.prepare(`UPDATE _converge_state SET value = ? WHERE key = 'clock'`).run(BigInt(Date.now() + aheadMs) * 1024n)
    raw.close()
    const sender = openReplica(file)
    open.push(sender)
    conn(sender).exec(`INSERT INTO todos VALUES ('fast', 'from the future', 0, NULL)`)
    return { sender, file }
  }

  it('a sender whose clock is an hour ahead is refused with CLOCK_DRIFT; nothing changes', () => {
    const { sender } = fastClockSender(3_600_000)
    const receiver = replica(S[0])
    conn(receiver).exec(`INSERT INTO todos VALUES ('mine', 'm', 0, NULL)`)
    receiver.versionVector()
    const hash = dbHash(conn(receiver))
    let err: ConvergeError | undefined
    try {
      receiver.importChanges(sender.exportChanges(receiver.versionVector()))
    } catch (e) {
      err = e as ConvergeError
    }
    expect(err?.code).toBe('CLOCK_DRIFT')
    expect(err?.details.site).toBe(sender.siteId)
    expect(err?.details.aheadMs as number).toBeGreaterThan(3_500_000)
    expect(dbHash(conn(receiver))).toBe(hash)
    // A receiver that tolerates two hours accepts it.
    const lenient = replica(S[1], TODOS, ['todos'], { maxClockDriftMs: 7_200_000 })
    expect(sync(sender, lenient).applied).toBeGreaterThan(0)
  })

  it('a sender a little ahead (within the limit) is accepted, and later local edits still win', () => {
    const { sender } = fastClockSender(60_000)
    const receiver = replica(S[0])
    sync(sender, receiver)
    expect(title(receiver, 'fast')).toBe('from the future')
    // The receiver's clock moved past the sender's: its edit made after the sync wins.
    conn(receiver).exec(`UPDATE todos SET title = 'edited after sync' WHERE id = 'fast'`)
    syncBoth(receiver, sender)
    expect(title(sender, 'fast')).toBe('edited after sync')
    expect([...sender.conflicts(), ...receiver.conflicts()]).toEqual([])
  })
})

// ---------------------------------------------------------------------------------------

describe('conflict log', () => {
  /** a and b share row 'x'; a writes `va`, then (later) b writes `vb`, to the same cell. */
  function concurrent(va: unknown = 'from a', vb: unknown = 'from b', column = 'title') {
    const [a, b] = [replica(S[0]), replica(S[1])]
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'original', 0, x'00'), ('y', 'other', 0, NULL)`)
    sync(a, b)
    conn(a).prepare(`UPDATE todos SET ${column} = ? WHERE id = 'x'`).run(va)
    a.versionVector()
    tick()
    conn(b).prepare(`UPDATE todos SET ${column} = ? WHERE id = 'x'`).run(vb)
    b.versionVector()
    return { a, b }
  }

  it('concurrent writes to the same cell: the losing replica records both values', () => {
    const { a, b } = concurrent()
    const intoA = sync(b, a) // b's later write wins on a
    expect(intoA.conflicts).toBe(1)
    expect(title(a, 'x')).toBe('from b')
    const [c, ...more] = a.conflicts()
    expect(more).toEqual([])
    expect(c).toMatchObject({
      table: 'todos',
      pk: ['x'],
      column: 'title',
      kept: 'from b',
      lost: 'from a',
      keptSite: b.siteId,
      lostSite: a.siteId,
    })
    expect(c?.keptAt).toBeGreaterThanOrEqual(c?.lostAt as number)
    expect(Math.abs((c?.recordedAt as number) - Date.now())).toBeLessThan(60_000)
    expect(Math.abs((c?.lostAt as number) - Date.now())).toBeLessThan(60_000)
    // The winner also held both versions when it merged; if it logs, it logs the same pair.
    const intoB = sync(a, b)
    expect(title(b, 'x')).toBe('from b')
    for (const k of b.conflicts()) {
      expect(k).toMatchObject({
        column: 'title',
        kept: 'from b',
        lost: 'from a',
        keptSite: b.siteId,
        lostSite: a.siteId,
      })
    }
    expect(intoB.conflicts).toBe(b.conflicts().length)
    expectConverged([a, b])
    // Exchanging again does not log the conflict again.
    syncBoth(a, b)
    expect(a.conflicts()).toHaveLength(1)
  })

  it('the same holds whichever direction is synced first', () => {
    const { a, b } = concurrent()
    sync(a, b)
    sync(b, a)
    expectConverged([a, b])
    expect(title(a, 'x')).toBe('from b')
    expect(a.conflicts()).toHaveLength(1)
    expect(a.conflicts()[0]).toMatchObject({ kept: 'from b', lost: 'from a', lostSite: a.siteId })
    // Here b held both versions when it merged (it received a's write first): it logs too.
    expect(b.conflicts()).toHaveLength(1)
    expect(b.conflicts()[0]).toMatchObject({ kept: 'from b', lost: 'from a', keptSite: b.siteId, lostSite: a.siteId })
  })

  it('conflict values keep their types (bigint, blob, real, NULL)', () => {
    const { a, b } = concurrent(2n ** 60n, Buffer.from([1, 2, 3]), 'data')
    sync(b, a)
    expect(a.conflicts()).toHaveLength(1)
    const c = a.conflicts()[0]
    expect(c?.lost).toBe(2n ** 60n)
    expect(Buffer.from(c?.kept as Uint8Array)).toEqual(Buffer.from([1, 2, 3]))
    const { a: a2, b: b2 } = concurrent(1.0, null, 'data')
    sync(b2, a2)
    expect(a2.conflicts()[0]).toMatchObject({ kept: null, lost: 1 })
    // Restoring puts the REAL back as REAL.
    a2.resolveConflict(a2.conflicts()[0]?.id as number, 'restore')
    expect(conn(a2).prepare(`SELECT typeof(data) FROM todos WHERE id = 'x'`).pluck().get()).toBe('real')
  })

  it('a sequential overwrite is not a conflict on either side', () => {
    const [a, b] = [replica(S[0]), replica(S[1])]
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'v1', 0, NULL)`)
    sync(a, b)
    conn(a).exec(`UPDATE todos SET title = 'v2 by a' WHERE id = 'x'`)
    expect(sync(a, b).conflicts).toBe(0)
    conn(b).exec(`UPDATE todos SET title = 'v3 by b' WHERE id = 'x'`)
    expect(sync(b, a)).toEqual({ applied: 1, conflicts: 0 })
    conn(a).exec(`UPDATE todos SET title = 'v4 by a' WHERE id = 'x'`)
    expect(sync(a, b)).toEqual({ applied: 1, conflicts: 0 })
    expect(a.conflicts()).toEqual([])
    expect(b.conflicts()).toEqual([])
    expectConverged([a, b])
  })

  it('a site editing a cell twice before syncing causes no conflict where nobody else wrote', () => {
    const [a, b] = [replica(S[0]), replica(S[1])]
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'v1', 0, NULL)`)
    sync(a, b)
    conn(a).exec(`UPDATE todos SET title = 'v2' WHERE id = 'x'`)
    a.versionVector()
    conn(a).exec(`UPDATE todos SET title = 'v3' WHERE id = 'x'`)
    expect(sync(a, b)).toEqual({ applied: 1, conflicts: 0 })
    // After b overwrote a's value, a edits twice (with a fold in between): still sequential.
    conn(b).exec(`UPDATE todos SET title = 'b' WHERE id = 'x'`)
    sync(b, a)
    conn(a).exec(`UPDATE todos SET title = 'a1' WHERE id = 'x'`)
    a.versionVector()
    tick()
    conn(a).exec(`UPDATE todos SET title = 'a2' WHERE id = 'x'`)
    expect(sync(a, b)).toEqual({ applied: 1, conflicts: 0 })
    expect(a.conflicts()).toEqual([])
    expect(b.conflicts()).toEqual([])
    expect(title(b, 'x')).toBe('a2')
  })

  it("resolveConflict(id, 'restore') writes the lost value back; it syncs and wins on the other side", () => {
    const { a, b } = concurrent()
    syncBoth(a, b)
    const conflict = a.conflicts()[0] as NonNullable<ReturnType<Replica['conflicts']>[number]>
    expect(conflict.lost).toBe('from a')
    tick()
    a.resolveConflict(conflict.id, 'restore')
    expect(title(a, 'x')).toBe('from a')
    expect(a.conflicts().map((c) => c.id)).not.toContain(conflict.id)
    const result = sync(a, b)
    expect(result).toEqual({ applied: 1, conflicts: 0 })
    expect(title(b, 'x')).toBe('from a')
    sync(b, a)
    expectConverged([a, b])
    expect(a.conflicts()).toEqual([])
    // b's log, if it recorded the original conflict, still lists only that one.
    expect(b.conflicts().every((c) => c.lost === 'from a')).toBe(true)
  })

  it("resolveConflict(id, 'keep') removes it from conflicts() and changes no row", () => {
    const { a, b } = concurrent()
    syncBoth(a, b)
    const [conflict] = a.conflicts()
    const vector = a.versionVector()
    a.resolveConflict(conflict?.id as number, 'keep')
    expect(a.conflicts()).toEqual([])
    expect(title(a, 'x')).toBe('from b')
    expect(a.versionVector()).toEqual(vector)
    expect(sync(a, b)).toEqual({ applied: 0, conflicts: 0 })
    expect(codeOf(() => a.resolveConflict(conflict?.id as number, 'keep'))).toBe('NO_SUCH_CONFLICT')
    expect(codeOf(() => a.resolveConflict(conflict?.id as number, 'restore'))).toBe('NO_SUCH_CONFLICT')
  })

  it('unknown ids are NO_SUCH_CONFLICT, bad resolutions BAD_ARGUMENT, vanished rows CONFLICT_STALE', () => {
    const { a, b } = concurrent()
    sync(b, a)
    const [conflict] = a.conflicts()
    const hash = dbHash(conn(a))
    expect(codeOf(() => a.resolveConflict(987654, 'keep'))).toBe('NO_SUCH_CONFLICT')
    expect(codeOf(() => a.resolveConflict(-1, 'restore'))).toBe('NO_SUCH_CONFLICT')
    expect(codeOf(() => a.resolveConflict(conflict?.id as number, 'drop' as 'keep'))).toBe('BAD_ARGUMENT')
    expect(dbHash(conn(a))).toBe(hash)
    conn(a).exec(`DELETE FROM todos WHERE id = 'x'`)
    a.versionVector()
    const hash2 = dbHash(conn(a))
    expect(codeOf(() => a.resolveConflict(conflict?.id as number, 'restore'))).toBe('CONFLICT_STALE')
    expect(dbHash(conn(a))).toBe(hash2)
    expect(a.conflicts()).toHaveLength(1)
    a.resolveConflict(conflict?.id as number, 'keep')
    expect(a.conflicts()).toEqual([])
  })
})

// ---------------------------------------------------------------------------------------

describe('deletes', () => {
  /** Runs the concurrent delete-vs-update scenario with the given exchange order. */
  function deleteVsUpdate(order: 'a-first' | 'b-first', reinsert = false) {
    const a = replica(S[0])
    const b = replica(S[1])
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'v1', 0, NULL), ('y', 'keep', 0, NULL)`)
    sync(a, b)
    conn(a).exec(`DELETE FROM todos WHERE id = 'x'`)
    if (reinsert) conn(a).exec(`INSERT INTO todos VALUES ('x', 'reinserted', 5, NULL)`)
    a.versionVector()
    tick()
    conn(b).exec(`UPDATE todos SET title = 'updated later by b', done = 1 WHERE id = 'x'`)
    b.versionVector()
    if (order === 'a-first') {
      sync(a, b)
      sync(b, a)
    } else {
      sync(b, a)
      sync(a, b)
    }
    expectConverged([a, b])
    const result = rows(a)
    a.close()
    b.close()
    return result
  }

  it('concurrent delete vs update ends the same on both sides whatever the exchange order', () => {
    const first = deleteVsUpdate('a-first')
    const second = deleteVsUpdate('b-first')
    expect(second).toEqual(first)
    // The delete wins (documented rule): only 'y' is left.
    expect(first).toHaveLength(1)
    expect(first[0]).toContain('keep')
  })

  it('concurrent delete + re-insert vs update: the new life wins everywhere', () => {
    const first = deleteVsUpdate('a-first', true)
    const second = deleteVsUpdate('b-first', true)
    expect(second).toEqual(first)
    expect(first.some((r) => r.includes('"reinserted"'))).toBe(true)
    expect(first.some((r) => r.includes('updated later by b'))).toBe(false)
  })

  it('concurrent deletes of the same row, and delete vs key change, converge', () => {
    const [a, b, c] = [replica(S[0]), replica(S[1]), replica(S[2])]
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'x', 0, NULL), ('y', 'y', 0, NULL)`)
    sync(a, b)
    sync(a, c)
    conn(a).exec(`DELETE FROM todos WHERE id = 'x'`)
    conn(b).exec(`DELETE FROM todos WHERE id = 'x'; UPDATE todos SET id = 'y2' WHERE id = 'y'`)
    conn(c).exec(`UPDATE todos SET title = 'c edit' WHERE id = 'y'`)
    for (let i = 0; i < 2; i++) for (const x of [a, b, c]) for (const y of [a, b, c]) if (x !== y) sync(x, y)
    expectConverged([a, b, c])
    expect(conn(a).prepare('SELECT id FROM todos ORDER BY id').pluck().all()).toEqual(['y2'])
  })

  it('delete then re-insert propagates, also through a relay and to a late joiner', () => {
    const [a, b, c] = [replica(S[0]), replica(S[1]), replica(S[2])]
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'first life', 0, x'01')`)
    sync(a, b)
    sync(b, c)
    conn(a).exec(`DELETE FROM todos WHERE id = 'x'`)
    sync(a, b)
    sync(b, c)
    expect(conn(c).prepare(`SELECT count(*) FROM todos`).pluck().get()).toBe(0)
    conn(b).exec(`INSERT INTO todos VALUES ('x', 'second life', 1, NULL)`)
    sync(b, a)
    sync(b, c)
    expectConverged([a, b, c])
    expect(title(a, 'x')).toBe('second life')
    expect(conn(a).prepare(`SELECT data FROM todos WHERE id = 'x'`).pluck().get()).toBeNull()
    conn(a).exec(`DELETE FROM todos WHERE id = 'x'; INSERT INTO todos VALUES ('x', 'third life', 2, NULL)`)
    sync(a, b)
    sync(b, c)
    expectConverged([a, b, c])
    const late = replica(S[3])
    sync(c, late)
    expectConverged([a, late])
    expect(title(late, 'x')).toBe('third life')
  })
})

// ---------------------------------------------------------------------------------------

describe('a failed import leaves no trace', () => {
  it('after a CONSTRAINT failure on new rows, a later valid import applies only its own rows', () => {
    // The receiver has a CHECK the sender lacks (constraints are not part of the schema hash).
    const a = replica(S[0], 'CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)', ['t'])
    const b = replica(S[1], 'CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)', ['t'])
    const r = replica(S[2], 'CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER CHECK (v >= 0))', ['t'])
    conn(a).exec('INSERT INTO t VALUES (1, -1)')
    const hash = dbHash(conn(r))
    expect(codeOf(() => r.importChanges(a.exportChanges()))).toBe('CONSTRAINT')
    expect(dbHash(conn(r))).toBe(hash)
    conn(b).exec('INSERT INTO t VALUES (2, 5)')
    expect(r.importChanges(b.exportChanges(r.versionVector()))).toEqual({ applied: 2, conflicts: 0 })
    expect(conn(r).prepare('SELECT id, v FROM t').raw().all()).toEqual([[2, 5]])
  })

  it('rows of a payload refused with CONSTRAINT do not show up during a later import', () => {
    const ddl = 'CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)'
    const [a, b, r] = [replica(S[0], ddl, ['t']), replica(S[1], ddl, ['t']), replica(S[2], ddl, ['t'])]
    conn(a).exec(`INSERT INTO t VALUES (1, 'x')`)
    conn(r).exec(`INSERT INTO t VALUES (5, 'x')`)
    expect(codeOf(() => r.importChanges(a.exportChanges(r.versionVector())))).toBe('CONSTRAINT')
    conn(r).exec('DELETE FROM t WHERE id = 5')
    conn(b).exec(`INSERT INTO t VALUES (2, 'y')`)
    expect(r.importChanges(b.exportChanges(r.versionVector()))).toEqual({ applied: 2, conflicts: 0 })
    // Only b's row: a's row 1 belongs to the payload that was refused as a whole.
    expect(conn(r).prepare('SELECT id FROM t ORDER BY id').pluck().all()).toEqual([2])
    expect(a.siteId in r.versionVector()).toBe(false)
    // A retry of a's payload now succeeds and brings row 1.
    r.importChanges(a.exportChanges(r.versionVector()))
    expect(conn(r).prepare('SELECT id FROM t ORDER BY id').pluck().all()).toEqual([1, 2])
  })
})

// ---------------------------------------------------------------------------------------

describe('arguments', () => {
  it('an invalid since vector is BAD_ARGUMENT; a closed replica is CLOSED', () => {
    const a = replica(S[0])
    a.db.exec(`INSERT INTO todos VALUES ('1', 'one', 0, NULL)`)
    const bad: unknown[] = [
      null,
      [],
      'vector',
      { [a.siteId]: -1 },
      { [a.siteId]: 1.5 },
      { [a.siteId]: '1' },
      { [a.siteId]: Number.MAX_SAFE_INTEGER + 2 },
      { [a.siteId.toUpperCase()]: 1 },
      { short: 1 },
    ]
    for (const since of bad) {
      expect(
        codeOf(() => a.exportChanges(since as Record<string, number>)),
        JSON.stringify(since),
      ).toBe('BAD_ARGUMENT')
    }
    a.close()
    expect(codeOf(() => a.exportChanges())).toBe('CLOSED')
    expect(codeOf(() => a.versionVector())).toBe('CLOSED')
    expect(codeOf(() => a.importChanges(new Uint8Array(0)))).toBe('CLOSED')
    expect(codeOf(() => a.conflicts())).toBe('CLOSED')
  })
})
