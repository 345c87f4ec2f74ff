/**
 * Bundle files: round trip, incremental exports for a peer, relays through files,
 * snapshots (and why leaving tombstones out stays safe), signatures and trust, encryption,
 * damaged, truncated, duplicate and foreign bundles, and the peer list.
 */
import { createHash } from 'node:crypto'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ed25519 } from '@noble/curves/ed25519.js'
import Database from 'better-sqlite3'
import { openReplica, Replica, type ReplicaFiles } from 'sqlite-converge'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { dbHash, serializeValue } from './helpers/db-hash.js'
import { codeOf } from './helpers/replicas.js'

const conn = (r: Replica): Database.Database => r.db as Database.Database

const TODOS = 'CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT, done INTEGER, data BLOB)'
const S = ['1a'.repeat(16), '2b'.repeat(16), '3c'.repeat(16), '4d'.repeat(16), '5e'.repeat(16)] as const
/** Cheap scrypt for tests that derive many keys; the header carries it and readers honour it. */
const FAST_SCRYPT = { N: 2 ** 10 }

const open: Replica[] = []
afterEach(() => {
  for (const r of open.splice(0)) if (conn(r).open) r.close()
})

let dir: string
let fileNo = 0
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'converge-bundle-'))
})
afterAll(() => {
  rmSync(dir, { recursive: true, force: true })
})

function file(name = 'b'): string {
  return join(dir, `${name}-${++fileNo}.cvrb`)
}

function replica(siteId?: string, ddl = TODOS): Replica {
  const r = openReplica(':memory:', siteId ? { siteId } : {})
  open.push(r)
  conn(r).exec(ddl)
  r.enableSync('todos')
  return r
}

function rows(r: Replica): string[] {
  return (conn(r).prepare('SELECT * FROM todos').raw().safeIntegers().all() as unknown[][])
    .map((row) => row.map(serializeValue).join('|'))
    .sort()
}

function ids(r: Replica): string[] {
  return (conn(r).prepare('SELECT id FROM todos ORDER BY id').pluck().all() as string[]).slice()
}

/** Moves everything `to` lacks from `from` through a bundle file exported for `to`. */
function carry(from: Replica, to: Replica) {
  const path = file()
  from.exportBundle(path, { for: to.siteId })
  return to.importBundle(path)
}

/** The same through the receiver's current vector (what a test relies on the receiver really knowing). */
function carryFor(from: Replica, to: Replica) {
  const path = file()
  from.exportBundle(path, { for: to.versionVector() })
  return to.importBundle(path)
}

function keyPair(): { privateKey: Uint8Array; publicKey: Uint8Array } {
  const privateKey = ed25519.utils.randomSecretKey()
  return { privateKey, publicKey: ed25519.getPublicKey(privateKey) }
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')

// Byte layout of the header (docs/bundle-format.md), for the tests that damage it.
const FLAGS_AT = 5
const HASH_BYTES = 32

/** Header length of a bundle, read from its flags. */
function headerLength(bytes: Uint8Array): number {
  const flags = bytes[FLAGS_AT] as number
  let n = 6
  if (flags & 2) n += 1 + (bytes[6] === 1 ? 3 + 16 : 0) + 24
  if (flags & 4) n += 32
  return n + 8 + HASH_BYTES
}

/** Rewrites the header hash after a deliberate change to the header (to reach checks behind it). */
function rehash(bytes: Uint8Array): void {
  const end = headerLength(bytes) - HASH_BYTES
  bytes.set(createHash('sha256').update(bytes.subarray(0, end)).digest(), end)
}

// ---------------------------------------------------------------------------------------

describe('export and import', () => {
  it('round trip: every row arrives, the result reports changes, bytes and the sender', () => {
    const [a, b] = [replica(S[0]), replica(S[1])]
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'milk', 0, x'00ff'), ('y', 'bread', 1, NULL), ('z', 'é', 2, x'')`)
    conn(a).exec(`DELETE FROM todos WHERE id = 'z'`)
    const path = file()
    const out = a.exportBundle(path)
    expect(out).toEqual({ changes: 3, bytes: statSync(path).size })
    expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([])
    const res = b.importBundle(path)
    expect(res).toMatchObject({ duplicate: false, from: a.siteId, conflicts: 0 })
    expect(res.applied).toBeGreaterThanOrEqual(2)
    expect(rows(b)).toEqual(rows(a))
    expect(ids(b)).toEqual(['x', 'y'])
    expect(b.versionVector()).toEqual(a.versionVector())
  })

  it('applied counts like importChanges does', () => {
    const [a, b, c] = [replica(S[0]), replica(S[1]), replica(S[2])]
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'milk', 0, NULL), ('y', 'bread', 1, NULL)`)
    const path = file()
    a.exportBundle(path)
    expect(b.importBundle(path).applied).toBe(c.importChanges(a.exportChanges()).applied)
  })

  it('replaces an existing file and leaves no temporary file', () => {
    const a = replica(S[0])
    const path = file()
    writeFileSync(path, 'old content')
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'milk', 0, NULL)`)
    a.exportBundle(path)
    expect(readFileSync(path).subarray(0, 4).toString()).toBe('CVRB')
    expect(existsSync(`${path}.tmp`)).toBe(false)
  })

  it('writes through options.files: a temporary file, then a rename', () => {
    const calls: string[] = []
    const store = new Map<string, Uint8Array>()
    const files: ReplicaFiles = {
      readFile: (p) => {
        calls.push(`read ${p}`)
        const data = store.get(p)
        if (!data) throw new Error(`no file ${p}`)
        return data
      },
      writeFile: (p, parts) => {
        calls.push(`write ${p}`)
        store.set(p, Buffer.concat(parts))
      },
      rename: (f, t) => {
        calls.push(`rename ${f} ${t}`)
        store.set(t, store.get(f) as Uint8Array)
        store.delete(f)
      },
    }
    const db = new Database(':memory:')
    const r = new Replica(db, { siteId: S[0], files })
    open.push(r)
    db.exec(TODOS)
    r.enableSync('todos')
    db.exec(`INSERT INTO todos VALUES ('x', 'milk', 0, NULL)`)
    r.exportBundle('mem/x')
    expect(calls).toEqual(['write mem/x.tmp', 'rename mem/x.tmp mem/x'])
    const b = replica(S[1])
    writeFileSync(join(dir, 'from-memory.cvrb'), store.get('mem/x') as Uint8Array)
    b.importBundle(join(dir, 'from-memory.cvrb'))
    expect(rows(b)).toEqual(rows(r))
  })

  it('a replica without file access refuses with BAD_ARGUMENT', () => {
    const db = new Database(':memory:')
    const r = new Replica(db)
    open.push(r)
    expect(codeOf(() => r.exportBundle(file()))).toBe('BAD_ARGUMENT')
    expect(codeOf(() => r.importBundle(file()))).toBe('BAD_ARGUMENT')
  })

  it('bad options are BAD_ARGUMENT', () => {
    const a = replica(S[0])
    const p = file()
    expect(codeOf(() => a.exportBundle(p, { for: 'not a site' }))).toBe('BAD_ARGUMENT')
    expect(codeOf(() => a.exportBundle(p, { for: { [S[1]]: -1 } }))).toBe('BAD_ARGUMENT')
    expect(codeOf(() => a.exportBundle(p, { snapshot: true, for: S[1] }))).toBe('BAD_ARGUMENT')
    expect(codeOf(() => a.exportBundle(p, { sign: { privateKey: new Uint8Array(31) } }))).toBe('BAD_ARGUMENT')
    expect(codeOf(() => a.exportBundle(p, { sign: { privateKey: 'abc' } }))).toBe('BAD_ARGUMENT')
    expect(codeOf(() => a.exportBundle(p, { encrypt: { key: new Uint8Array(16) } }))).toBe('BAD_ARGUMENT')
    expect(codeOf(() => a.exportBundle(p, { encrypt: { password: '' } }))).toBe('BAD_ARGUMENT')
    expect(codeOf(() => a.exportBundle(p, { encrypt: { password: 'x', scrypt: { N: 1000 } } }))).toBe('BAD_ARGUMENT')
    const odd = { password: 'x', scrypt: 'fast' } as unknown as { password: string }
    expect(codeOf(() => a.exportBundle(p, { encrypt: odd }))).toBe('BAD_ARGUMENT')
    expect(codeOf(() => a.exportBundle(p, { encrypt: { password: 'x', scrypt: { N: 2 ** 24 } } }))).toBe('BAD_ARGUMENT')
    const both = { password: 'x', key: new Uint8Array(32) } as unknown as { password: string }
    expect(codeOf(() => a.exportBundle(p, { encrypt: both }))).toBe('BAD_ARGUMENT')
    expect(existsSync(p)).toBe(false)
    a.exportBundle(p)
    expect(codeOf(() => a.importBundle(p, { trust: [new Uint8Array(5)] }))).toBe('BAD_ARGUMENT')
    expect(codeOf(() => a.importBundle(p, { key: 'zz' }))).toBe('BAD_ARGUMENT')
  })
})

// ---------------------------------------------------------------------------------------

describe('incremental bundles', () => {
  it('after B imports from A, a bundle for A holds exactly what A has not seen', () => {
    const [a, b] = [replica(S[0]), replica(S[1])]
    conn(a).exec(`INSERT INTO todos VALUES ('a1', 'one', 0, NULL), ('a2', 'two', 0, NULL), ('a3', 'three', 0, NULL)`)
    expect(carry(a, b).applied).toBeGreaterThan(0)
    // Without `for`, a bundle holds everything.
    expect(b.exportBundle(file()).changes).toBe(3)
    // B knows what A announced: nothing to send.
    expect(b.exportBundle(file(), { for: a.siteId }).changes).toBe(0)
    conn(b).exec(`UPDATE todos SET done = 1 WHERE id = 'a1'; INSERT INTO todos VALUES ('b1', 'mine', 0, NULL)`)
    const path = file()
    expect(b.exportBundle(path, { for: a.siteId }).changes).toBe(2)
    // The same through an explicit vector.
    expect(b.exportBundle(file(), { for: a.versionVector() }).changes).toBe(2)
    // An unknown peer gets everything.
    expect(b.exportBundle(file(), { for: S[4] }).changes).toBe(4)
    expect(a.importBundle(path).applied).toBeGreaterThan(0)
    expect(rows(a)).toEqual(rows(b))
    // And back: B's bundle announced B's vector, so A owes B nothing.
    expect(a.exportBundle(file(), { for: b.siteId }).changes).toBe(0)
    conn(a).exec(`DELETE FROM todos WHERE id = 'a2'`)
    expect(a.exportBundle(file(), { for: b.siteId }).changes).toBe(1)
  })

  it('three replicas exchanging files A -> B -> C -> A converge', () => {
    const [a, b, c] = [replica(S[0]), replica(S[1]), replica(S[2])]
    conn(a).exec(`INSERT INTO todos VALUES ('a', 'from a', 0, NULL), ('shared', 'a wrote', 0, NULL)`)
    conn(b).exec(`INSERT INTO todos VALUES ('b', 'from b', 0, x'0b')`)
    conn(c).exec(`INSERT INTO todos VALUES ('c', 'from c', 0, NULL), ('gone', 'c wrote', 0, NULL)`)
    carry(a, b)
    carry(b, c)
    conn(c).exec(`UPDATE todos SET title = 'c edited' WHERE id = 'a'; DELETE FROM todos WHERE id = 'gone'`)
    carry(c, a)
    conn(a).exec(`UPDATE todos SET done = 1 WHERE id = 'b'`)
    conn(b).exec(`UPDATE todos SET title = 'b wrote' WHERE id = 'shared'`)
    // Second round of the ring, everyone exporting only what the next one lacks.
    carry(a, b)
    carry(b, c)
    carry(c, a)
    carry(a, b)
    expect(rows(b)).toEqual(rows(a))
    expect(rows(c)).toEqual(rows(a))
    expect(ids(a)).toEqual(['a', 'b', 'c', 'shared'])
    expect(conn(a).prepare(`SELECT title FROM todos WHERE id = 'a'`).pluck().get()).toBe('c edited')
    expect(conn(c).prepare(`SELECT done FROM todos WHERE id = 'b'`).pluck().get()).toBe(1)
    expect(conn(c).prepare(`SELECT title FROM todos WHERE id = 'shared'`).pluck().get()).toBe('b wrote')
    expect(b.versionVector()).toEqual(a.versionVector())
    expect(c.versionVector()).toEqual(a.versionVector())
  })
})

// ---------------------------------------------------------------------------------------

describe('snapshots', () => {
  /** A holds x, z (edited) and a tombstone of y; C got x, y, z before the delete. */
  function setup() {
    const [a, c] = [replica(S[0]), replica(S[2])]
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'x1', 0, NULL), ('y', 'y1', 0, NULL), ('z', 'z1', 0, NULL)`)
    carry(a, c)
    conn(a).exec(`DELETE FROM todos WHERE id = 'y'; UPDATE todos SET title = 'x2' WHERE id = 'x'`)
    const snap = file('snapshot')
    return { a, c, snap, out: a.exportBundle(snap, { snapshot: true }) }
  }

  it('holds the live rows only: no tombstones', () => {
    const { a, out } = setup()
    expect(out.changes).toBe(2)
    expect(a.exportBundle(file()).changes).toBe(3)
  })

  it('a fresh replica that imports a snapshot ignores stale data it later receives', () => {
    const { a, c, snap } = setup()
    const r = replica(S[1])
    r.importBundle(snap)
    expect(rows(r)).toEqual(rows(a))
    // The snapshot's vector was adopted, so incremental exports work from it.
    expect(r.versionVector()).toEqual(a.versionVector())
    // C still has y alive and x's old title; everything of it is covered by the snapshot's vector.
    const stale = file('stale')
    c.exportBundle(stale)
    r.importBundle(stale)
    r.importChanges(c.exportChanges())
    expect(ids(r)).toEqual(['x', 'z'])
    expect(rows(r)).toEqual(rows(a))
    conn(a).exec(`UPDATE todos SET done = 1 WHERE id = 'z'`)
    const next = file()
    expect(a.exportBundle(next, { for: r.versionVector() }).changes).toBe(1)
    r.importBundle(next)
    expect(rows(r)).toEqual(rows(a))
  })

  it('a replica that holds a row the snapshot dropped as deleted still gets the delete later', () => {
    const { a, c, snap } = setup()
    c.importBundle(snap)
    // The snapshot cannot tell C that y is gone, so C must not claim to have seen that delete.
    expect(ids(c)).toEqual(['x', 'y', 'z'])
    expect(c.versionVector()[a.siteId]).toBeLessThan(a.versionVector()[a.siteId] as number)
    carryFor(a, c)
    expect(rows(c)).toEqual(rows(a))
  })

  it('a replica bootstrapped from a snapshot does not pass on a vector covering deletes it lacks', () => {
    const { a, c, snap } = setup()
    const r = replica(S[1])
    r.importBundle(snap)
    // D got y from C before the delete; then it hears only from R.
    const d = replica(S[3])
    carry(c, d)
    expect(ids(d)).toContain('y')
    carryFor(r, d)
    expect(ids(d)).toContain('y')
    // A's next bundle for what D knows must still carry y's tombstone.
    carryFor(a, d)
    expect(rows(d)).toEqual(rows(a))
    // A full bundle from R does not announce A's entry either.
    const e = replica(S[4])
    carry(c, e)
    const full = file()
    r.exportBundle(full)
    e.importBundle(full)
    carryFor(a, e)
    expect(rows(e)).toEqual(rows(a))
  })

  it('snapshots chain: a snapshot of a snapshot-bootstrapped replica is as good as the first', () => {
    const { a, c, snap } = setup()
    const r = replica(S[1])
    r.importBundle(snap)
    const snap2 = file('snapshot')
    expect(r.exportBundle(snap2, { snapshot: true }).changes).toBe(2)
    // A fresh replica adopts the vector (a snapshot has no tombstones to lack) and ignores stale rows.
    const f = replica(S[3])
    f.importBundle(snap2)
    expect(f.versionVector()).toEqual(a.versionVector())
    f.importChanges(c.exportChanges())
    expect(rows(f)).toEqual(rows(a))
    // C, which still holds y, keeps its vector and gets the delete from A later.
    c.importBundle(snap2)
    expect(ids(c)).toContain('y')
    carryFor(r, c)
    expect(ids(c)).toContain('y')
    carryFor(a, c)
    expect(rows(c)).toEqual(rows(a))
  })
})

// ---------------------------------------------------------------------------------------

describe('signatures and trust', () => {
  it('with trust, an unsigned bundle and one signed by another key are refused; the right key is accepted', () => {
    const [a, b] = [replica(S[0]), replica(S[1])]
    const mine = keyPair()
    const other = keyPair()
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'milk', 0, NULL)`)
    const unsigned = file()
    a.exportBundle(unsigned)
    const wrong = file()
    a.exportBundle(wrong, { sign: { privateKey: other.privateKey } })
    const right = file()
    a.exportBundle(right, { sign: { privateKey: hex(mine.privateKey) } })
    const hash = dbHash(conn(b))
    expect(codeOf(() => b.importBundle(unsigned, { trust: [mine.publicKey] }))).toBe('UNTRUSTED_BUNDLE')
    expect(codeOf(() => b.importBundle(wrong, { trust: [mine.publicKey] }))).toBe('UNTRUSTED_BUNDLE')
    expect(codeOf(() => b.importBundle(right, { trust: [] }))).toBe('UNTRUSTED_BUNDLE')
    expect(dbHash(conn(b))).toBe(hash)
    expect(b.peers()).toEqual([])
    const res = b.importBundle(right, { trust: [other.publicKey, hex(mine.publicKey)] })
    expect(res).toMatchObject({ duplicate: false, from: a.siteId })
    expect(rows(b)).toEqual(rows(a))
  })

  it('without trust, signed and unsigned bundles are accepted, but a broken signature is not', () => {
    const [a, b, c] = [replica(S[0]), replica(S[1]), replica(S[2])]
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'milk', 0, NULL)`)
    const signed = file()
    a.exportBundle(signed, { sign: { privateKey: keyPair().privateKey } })
    b.importBundle(signed)
    expect(rows(b)).toEqual(rows(a))
    const bytes = readFileSync(signed)
    bytes[bytes.length - 1] = (bytes[bytes.length - 1] as number) ^ 1
    const broken = file()
    writeFileSync(broken, bytes)
    const hash = dbHash(conn(c))
    expect(codeOf(() => c.importBundle(broken))).toBe('UNTRUSTED_BUNDLE')
    expect(dbHash(conn(c))).toBe(hash)
  })
})

// ---------------------------------------------------------------------------------------

describe('encryption', () => {
  it('password: the default scrypt parameters are in the header; right password imports, wrong one changes nothing', () => {
    const [a, b] = [replica(S[0]), replica(S[1])]
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'secret plans', 0, NULL)`)
    const path = file()
    a.exportBundle(path, { encrypt: { password: 'correct horse' } })
    const bytes = readFileSync(path)
    expect(bytes[FLAGS_AT]).toBe(2)
    expect([...bytes.subarray(6, 10)]).toEqual([1, 15, 8, 1]) // scrypt, log2 N, r, p
    // The clear header names no site: the sender id appears nowhere in the file.
    expect(bytes.includes(Buffer.from(a.siteId, 'hex'))).toBe(false)
    const hash = dbHash(conn(b))
    expect(codeOf(() => b.importBundle(path, { password: 'wrong horse' }))).toBe('DECRYPT_FAILED')
    expect(codeOf(() => b.importBundle(path))).toBe('DECRYPT_FAILED')
    expect(codeOf(() => b.importBundle(path, { key: new Uint8Array(32) }))).toBe('DECRYPT_FAILED')
    expect(dbHash(conn(b))).toBe(hash)
    expect(b.importBundle(path, { password: 'correct horse' }).from).toBe(a.siteId)
    expect(rows(b)).toEqual(rows(a))
  })

  it('a plain bundle does carry the sender id (the check above can fail)', () => {
    const a = replica(S[0])
    const path = file()
    a.exportBundle(path)
    expect(readFileSync(path).includes(Buffer.from(a.siteId, 'hex'))).toBe(true)
  })

  it('raw key: right key imports, wrong key changes nothing', () => {
    const [a, b] = [replica(S[0]), replica(S[1])]
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'secret', 0, NULL)`)
    const key = globalThis.crypto.getRandomValues(new Uint8Array(32))
    const path = file()
    a.exportBundle(path, { encrypt: { key } })
    expect(readFileSync(path)[6]).toBe(0)
    const hash = dbHash(conn(b))
    const wrong = key.slice()
    wrong[0] = (wrong[0] as number) ^ 1
    expect(codeOf(() => b.importBundle(path, { key: wrong }))).toBe('DECRYPT_FAILED')
    expect(codeOf(() => b.importBundle(path, { password: 'x' }))).toBe('DECRYPT_FAILED')
    expect(dbHash(conn(b))).toBe(hash)
    b.importBundle(path, { key: hex(key) })
    expect(rows(b)).toEqual(rows(a))
  })

  it('the reader honours the scrypt parameters in the header and refuses absurd ones', () => {
    const [a, b] = [replica(S[0]), replica(S[1])]
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'secret', 0, NULL)`)
    const path = file()
    a.exportBundle(path, { encrypt: { password: 'pw', scrypt: { N: 2 ** 11, r: 4, p: 2 } } })
    const bytes = readFileSync(path)
    expect([...bytes.subarray(6, 10)]).toEqual([1, 11, 4, 2])
    const hash = dbHash(conn(b))
    for (const [at, value] of [
      [7, 30], // N = 2^30
      [7, 0], // N = 1
      [8, 200], // r
      [9, 0], // p
      [9, 255], // p
      [6, 7], // unknown key derivation
    ] as const) {
      const bad = Uint8Array.from(bytes)
      bad[at] = value
      rehash(bad)
      const p = file()
      writeFileSync(p, bad)
      expect(
        codeOf(() => b.importBundle(p, { password: 'pw' })),
        `byte ${at} = ${value}`,
      ).toBe('BAD_BUNDLE')
    }
    // Changing N within bounds derives another key: the AEAD refuses it.
    const other = Uint8Array.from(bytes)
    other[7] = 12
    rehash(other)
    const p = file()
    writeFileSync(p, other)
    expect(codeOf(() => b.importBundle(p, { password: 'pw' }))).toBe('DECRYPT_FAILED')
    expect(dbHash(conn(b))).toBe(hash)
    b.importBundle(path, { password: 'pw' })
    expect(rows(b)).toEqual(rows(a))
  })
})

// ---------------------------------------------------------------------------------------

describe('damaged, truncated, duplicate and foreign bundles', () => {
  const ALLOWED = ['DECRYPT_FAILED', 'BAD_BUNDLE', 'UNTRUSTED_BUNDLE']

  /** A receiver with state of its own, a signer, and a bundle from A with several rows. */
  function fixture() {
    const [a, b] = [replica(S[0]), replica(S[1])]
    conn(b).exec(`INSERT INTO todos VALUES ('b', 'mine', 0, NULL)`)
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'milk', 0, x'01'), ('y', 'bread', 1, NULL), ('z', 'eggs', 2, NULL)`)
    conn(a).exec(`DELETE FROM todos WHERE id = 'y'`)
    return { a, b, signer: keyPair(), key: globalThis.crypto.getRandomValues(new Uint8Array(32)) }
  }

  /** Positions worth damaging: every header byte, both ends and the middle of the body, the signature. */
  function positions(bytes: Uint8Array): number[] {
    const head = headerLength(bytes)
    const out = new Set<number>()
    for (let i = 0; i < head; i++) out.add(i)
    for (let i = 0; i < 12; i++) {
      out.add(head + i)
      out.add(Math.floor((head + bytes.length) / 2) + i)
      out.add(bytes.length - 1 - i)
      out.add(bytes.length - 64 - 1 - i)
    }
    return [...out].filter((i) => i >= 0 && i < bytes.length).sort((x, y) => x - y)
  }

  function tamperAll(
    b: Replica,
    path: string,
    options: Parameters<Replica['importBundle']>[1],
    expectAt?: (i: number, head: number, length: number) => string | undefined,
  ) {
    const bytes = readFileSync(path)
    const head = headerLength(bytes)
    const hash = dbHash(conn(b))
    const seen = new Set<string>()
    for (const i of positions(bytes)) {
      for (const flip of [0x01, 0x80]) {
        const bad = Uint8Array.from(bytes)
        bad[i] = (bad[i] as number) ^ flip
        const p = join(dir, 'tampered.cvrb')
        writeFileSync(p, bad)
        const code = codeOf(() => b.importBundle(p, options))
        expect(ALLOWED, `byte ${i} ^ ${flip}: ${code}`).toContain(code)
        const want = expectAt?.(i, head, bytes.length)
        if (want) expect(code, `byte ${i}`).toBe(want)
        seen.add(code as string)
      }
    }
    expect(dbHash(conn(b))).toBe(hash)
    expect(b.peers()).toEqual([])
    // The intact file still imports.
    b.importBundle(path, options)
    return seen
  }

  it('a damaged byte anywhere in a signed, encrypted bundle is refused and changes nothing', () => {
    const { a, b, signer, key } = fixture()
    const path = file()
    a.exportBundle(path, { sign: { privateKey: signer.privateKey }, encrypt: { key } })
    const seen = tamperAll(b, path, { key, trust: [signer.publicKey] }, (i, head) =>
      i < head ? undefined : 'UNTRUSTED_BUNDLE',
    )
    expect(seen).toEqual(new Set(['BAD_BUNDLE', 'UNTRUSTED_BUNDLE']))
    expect(rows(b)).toContain(rows(a)[0])
  })

  it('a damaged byte in an encrypted, unsigned bundle: DECRYPT_FAILED for the ciphertext', () => {
    const { a, b } = fixture()
    const path = file()
    a.exportBundle(path, { encrypt: { password: 'pw', scrypt: FAST_SCRYPT } })
    const seen = tamperAll(b, path, { password: 'pw' }, (i, head) => (i < head ? undefined : 'DECRYPT_FAILED'))
    expect(seen).toEqual(new Set(['BAD_BUNDLE', 'DECRYPT_FAILED']))
  })

  it('a damaged byte in a plain bundle is BAD_BUNDLE, never BAD_PAYLOAD', () => {
    const { a, b } = fixture()
    const path = file()
    a.exportBundle(path)
    const seen = tamperAll(b, path, {}, () => 'BAD_BUNDLE')
    expect(seen).toEqual(new Set(['BAD_BUNDLE']))
  })

  it('a flipped snapshot flag is caught by the header hash', () => {
    const { a, b } = fixture()
    const path = file()
    a.exportBundle(path)
    const bytes = readFileSync(path)
    bytes[FLAGS_AT] = 1
    writeFileSync(path, bytes)
    expect(codeOf(() => b.importBundle(path))).toBe('BAD_BUNDLE')
  })

  it('every truncation, an extra byte, an empty file and a foreign file are BAD_BUNDLE', () => {
    const { a, b, signer, key } = fixture()
    const hash = dbHash(conn(b))
    for (const options of [{}, { sign: { privateKey: signer.privateKey }, encrypt: { key } }]) {
      const path = file()
      a.exportBundle(path, options)
      const bytes = readFileSync(path)
      for (let n = 0; n < bytes.length; n++) {
        const p = join(dir, 'truncated.cvrb')
        writeFileSync(p, bytes.subarray(0, n))
        expect(
          codeOf(() => b.importBundle(p, { key })),
          `${n} of ${bytes.length} bytes`,
        ).toBe('BAD_BUNDLE')
      }
      const longer = join(dir, 'longer.cvrb')
      writeFileSync(longer, Buffer.concat([bytes, Buffer.from([0])]))
      expect(codeOf(() => b.importBundle(longer, { key }))).toBe('BAD_BUNDLE')
    }
    const payload = join(dir, 'payload.bin')
    writeFileSync(payload, a.exportChanges())
    expect(codeOf(() => b.importBundle(payload))).toBe('BAD_BUNDLE')
    const small = openReplica(':memory:', { siteId: S[2], maxPayloadBytes: 100 })
    open.push(small)
    const big = file()
    a.exportBundle(big)
    expect(statSync(big).size).toBeGreaterThan(200)
    expect(codeOf(() => small.importBundle(big))).toBe('BAD_BUNDLE')
    const text = join(dir, 'text.txt')
    writeFileSync(text, 'hello, this is not a bundle at all\n')
    expect(codeOf(() => b.importBundle(text))).toBe('BAD_BUNDLE')
    expect(dbHash(conn(b))).toBe(hash)
  })

  it('importing a bundle twice: duplicate, applied 0, database unchanged', () => {
    const { a, b } = fixture()
    const path = file()
    a.exportBundle(path, { encrypt: { password: 'pw', scrypt: FAST_SCRYPT } })
    const first = b.importBundle(path, { password: 'pw' })
    expect(first).toMatchObject({ duplicate: false, from: a.siteId })
    expect(first.applied).toBeGreaterThan(0)
    const hash = dbHash(conn(b))
    const peers = b.peers()
    expect(b.importBundle(path, { password: 'pw' })).toEqual({
      applied: 0,
      conflicts: 0,
      duplicate: true,
      from: a.siteId,
    })
    expect(dbHash(conn(b))).toBe(hash)
    expect(b.peers()).toEqual(peers)
    // Another file with the same content (fresh nonce and salt) is the same bundle.
    const again = file()
    a.exportBundle(again)
    expect(b.importBundle(again).duplicate).toBe(true)
    expect(dbHash(conn(b))).toBe(hash)
    // New content is not a duplicate.
    conn(a).exec(`UPDATE todos SET done = 9 WHERE id = 'x'`)
    const next = file()
    a.exportBundle(next)
    expect(b.importBundle(next)).toMatchObject({ duplicate: false, applied: 1 })
  })

  it('a bundle of a table with a shared column of another type is SCHEMA_MISMATCH and changes nothing', () => {
    // done is TEXT there and INTEGER here (a missing column alone would not be a mismatch).
    const a = replica(S[0], 'CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT, done TEXT)')
    const b = replica(S[1])
    conn(a).exec(`INSERT INTO todos VALUES ('x', 'milk', 'no')`)
    const path = file()
    a.exportBundle(path, { sign: { privateKey: keyPair().privateKey } })
    const hash = dbHash(conn(b))
    expect(codeOf(() => b.importBundle(path))).toBe('SCHEMA_MISMATCH')
    expect(dbHash(conn(b))).toBe(hash)
    expect(b.peers()).toEqual([])
  })
})

// ---------------------------------------------------------------------------------------

describe('peers', () => {
  it('lists every sender with the newest vector it announced and when it was last heard', () => {
    const [a, b, c] = [replica(S[0]), replica(S[1]), replica(S[2])]
    expect(b.peers()).toEqual([])
    conn(a).exec(`INSERT INTO todos VALUES ('a1', 'a', 0, NULL)`)
    const t0 = Date.now()
    b.importChanges(a.exportChanges())
    const vectorA = a.versionVector()
    expect(b.peers()).toEqual([{ siteId: a.siteId, vector: vectorA, lastSeen: expect.any(Number) }])
    const first = b.peers()[0]?.lastSeen as number
    expect(first).toBeGreaterThanOrEqual(t0)
    expect(first).toBeLessThanOrEqual(Date.now())

    conn(c).exec(`INSERT INTO todos VALUES ('c1', 'c', 0, NULL)`)
    const path = file()
    c.exportBundle(path)
    b.importBundle(path)
    expect(b.peers().map((p) => p.siteId)).toEqual([a.siteId, c.siteId])
    expect(b.peers()[1]?.vector).toEqual(c.versionVector())

    // An old payload imported late does not lower what A is known to have announced.
    const old = a.exportChanges()
    conn(a).exec(`INSERT INTO todos VALUES ('a2', 'a', 0, NULL)`)
    b.importChanges(a.exportChanges())
    const newer = a.versionVector()
    b.importChanges(old)
    expect(b.peers()[0]?.vector).toEqual(newer)
    expect(b.peers()[0]?.vector).not.toEqual(vectorA)
    // A refused import is not recorded.
    const stranger = replica(S[3], 'CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT, done TEXT, data BLOB)')
    conn(stranger).exec(`INSERT INTO todos VALUES ('s', 's', 'no', NULL)`)
    expect(codeOf(() => b.importChanges(stranger.exportChanges()))).toBe('SCHEMA_MISMATCH')
    expect(b.peers().map((p) => p.siteId)).toEqual([a.siteId, c.siteId])
    // A replica never lists itself.
    b.importChanges(b.exportChanges())
    expect(b.peers().map((p) => p.siteId)).not.toContain(b.siteId)
  })

  it('persists in the database file', () => {
    const path = join(dir, `peers-${++fileNo}.db`)
    const a = replica(S[0])
    const b = openReplica(path, { siteId: S[1] })
    conn(b).exec(TODOS)
    b.enableSync('todos')
    conn(a).exec(`INSERT INTO todos VALUES ('a1', 'a', 0, NULL)`)
    b.importChanges(a.exportChanges())
    const peers = b.peers()
    b.close()
    const again = openReplica(path)
    open.push(again)
    expect(again.peers()).toEqual(peers)
    expect(peers).toHaveLength(1)
  })
})
