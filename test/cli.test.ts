// The `converge` command end to end: the built binary run as a user would, on files in a temp dir.
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ed25519 } from '@noble/curves/ed25519.js'
import Database from 'better-sqlite3'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { dbHash } from './helpers/db-hash.js'

const root = join(import.meta.dirname, '..')
const BIN = join(root, 'dist', 'cli', 'main.js')
const SQLITE3 = '/usr/bin/sqlite3'
/** util-linux `script`, to run a command on a pseudo-terminal. */
const SCRIPT = '/usr/bin/script'
const TODOS_DDL = 'CREATE TABLE todos (id INTEGER PRIMARY KEY, title TEXT, done INTEGER NOT NULL DEFAULT 0)'
const HEX32 = /^[0-9a-f]{32}$/

let dir: string

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'converge-cli-'))
})

afterEach(() => {
  rmSync(dir, { recursive: true, force: true })
})

interface Run {
  code: number | null
  stdout: string
  stderr: string
}

/** Runs `converge ...args` in the temp dir, stdin an empty pipe (not a terminal). */
function converge(...args: string[]): Run {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: dir, input: '', encoding: 'utf8' })
  if (r.error) throw r.error
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

/** Runs a command that must succeed; returns its stdout. */
function ok(...args: string[]): string {
  const r = converge(...args)
  expect(r.code, `converge ${args.join(' ')}: ${r.stderr}`).toBe(0)
  return r.stdout
}

/** Runs a command that must fail with status 1 and `error CODE: ...` on stderr. */
function fails(code: string, ...args: string[]): void {
  const r = converge(...args)
  expect(r.stderr, `converge ${args.join(' ')}`).toMatch(new RegExp(`^error ${code}: \\S`))
  expect(r.stderr.trim().split('\n')).toHaveLength(1)
  expect(r.code).toBe(1)
}

/** The shell command line that runs `converge ...args`. */
function commandLine(args: string[]): string {
  return [process.execPath, BIN, ...args].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' ')
}

/**
 * Runs `converge ...args` on a pseudo-terminal, typing each of `answers` (then Enter) when
 * a password prompt appears. Resolves with the exit status and everything the terminal showed.
 */
function onTerminal(args: string[], answers: string[] = []): Promise<{ code: number | null; screen: string }> {
  const child = spawn(SCRIPT, ['-qefc', commandLine(args), '/dev/null'], { cwd: dir })
  let screen = ''
  let answered = 0
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (chunk: string) => {
    screen += chunk
    const prompts = screen.match(/[Pp]assword: /g)?.length ?? 0
    while (answered < prompts && answered < answers.length) child.stdin.write(`${answers[answered++]}\r`)
  })
  return new Promise((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, screen }))
  })
}

function file(name: string): string {
  return join(dir, name)
}

function sql(db: string, statements: string): void {
  const d = new Database(db)
  try {
    d.exec(statements)
  } finally {
    d.close()
  }
}

function todos(db: string): unknown[] {
  const d = new Database(db, { readonly: true })
  try {
    return d.prepare('SELECT id, title, done FROM todos ORDER BY id').all()
  } finally {
    d.close()
  }
}

/** Digest of every row of the file, internal tables included. */
function hash(db: string): string {
  const d = new Database(db, { readonly: true })
  try {
    return dbHash(d)
  } finally {
    d.close()
  }
}

/** A device: a replica file with the `todos` table created and synced. */
function device(name: string): { db: string; site: string } {
  const db = file(`${name}.db`)
  const site = ok('init', db).trim()
  sql(db, TODOS_DDL)
  ok('enable', db, 'todos')
  return { db, site }
}

/** Number of changes an `export` reported. */
function exported(stdout: string): number {
  const m = /^exported ([\d,]+) changes?/m.exec(stdout)
  expect(m, stdout).not.toBeNull()
  return Number(m?.[1]?.replaceAll(',', ''))
}

function json(stdout: string): unknown {
  return JSON.parse(stdout)
}

describe('converge: replicas and conflicts', () => {
  it('init prints a 32-hex site id that stays with the file', () => {
    const db = file('a.db')
    const site = ok('init', db).trim()
    expect(site).toMatch(HEX32)
    expect(ok('init', db).trim()).toBe(site)
    expect(ok('init', file('b.db')).trim()).not.toBe(site)
  })

  it('enable and status --json', () => {
    const db = file('a.db')
    const site = ok('init', db).trim()
    sql(
      db,
      `${TODOS_DDL}; CREATE TABLE notes (k TEXT PRIMARY KEY, body TEXT); INSERT INTO todos (title) VALUES ('a'), ('b')`,
    )
    expect(ok('enable', db, 'todos', 'notes')).toBe('syncing todos\nsyncing notes\n')
    expect(ok('enable', db, 'todos')).toBe('syncing todos\n')
    const status = json(ok('status', db, '--json'))
    expect(status).toEqual({
      siteId: site,
      tables: [
        { name: 'todos', rows: 2 },
        { name: 'notes', rows: 0 },
      ],
      versionVector: { [site]: expect.any(Number) },
      peers: [],
      conflicts: 0,
    })
    const human = ok('status', db)
    expect(human).toContain(site)
    expect(human).toMatch(/todos: 2 rows/)
    expect(human).toMatch(/0 unresolved/)
  })

  it('failures print one line "error CODE: ..." and exit 1', () => {
    const db = file('a.db')
    ok('init', db)
    sql(db, 'CREATE TABLE bag (x TEXT)')
    fails('NO_SUCH_TABLE', 'enable', db, 'nope')
    fails('NO_PRIMARY_KEY', 'enable', db, 'bag')
    fails('NO_SUCH_CONFLICT', 'resolve', db, '7', 'keep')
    fails('NO_SUCH_DATABASE', 'status', file('missing.db'))
    expect(existsSync(file('missing.db'))).toBe(false)
    fails('ENOENT', 'import', db, file('missing.bundle'))
  })

  it('wrong usage prints usage and exits 2', () => {
    const db = file('a.db')
    ok('init', db)
    const cases = [
      [],
      ['frobnicate'],
      ['init'],
      ['init', db, 'extra'],
      ['enable', db],
      ['status', db, '--bogus'],
      ['resolve', db, 'x', 'keep'],
      ['resolve', db, '0', 'keep'],
      ['resolve', db, '1', 'maybe'],
      ['export', db],
      ['export', db, file('f'), '--for', 'not-a-site'],
      ['export', db, file('f'), '--sign'],
      ['export', db, file('f'), '--snapshot', '--for', 'f'.repeat(32)],
      ['import', db, file('f'), '--trust'],
      ['keygen'],
    ]
    for (const args of cases) {
      const r = converge(...args)
      expect(r.code, `converge ${args.join(' ')}`).toBe(2)
      expect(r.stderr, `converge ${args.join(' ')}`).toMatch(/Usage: converge/)
      expect(r.stdout).toBe('')
    }
  })

  it('every command has --help', () => {
    for (const command of ['init', 'enable', 'status', 'export', 'import', 'conflicts', 'resolve', 'keygen']) {
      const r = converge(command, '--help')
      expect(r.code).toBe(0)
      expect(r.stdout).toMatch(new RegExp(`^Usage: converge ${command} `))
    }
    const top = converge('--help')
    expect(top.code).toBe(0)
    expect(top.stdout).toMatch(/Exit status/)
  })

  it('keygen writes a private key (mode 0600) and its public key as one line of hex', () => {
    expect(ok('keygen', file('alice'))).toMatch(/alice\.key/)
    const key = readFileSync(file('alice.key'), 'utf8')
    const pub = readFileSync(file('alice.pub'), 'utf8')
    expect(key).toMatch(/^[0-9a-f]{64}\n$/)
    expect(pub).toMatch(/^[0-9a-f]{64}\n$/)
    expect(statSync(file('alice.key')).mode & 0o777).toBe(0o600)
    expect(Buffer.from(ed25519.getPublicKey(Buffer.from(key.trim(), 'hex'))).toString('hex')).toBe(pub.trim())
    fails('EEXIST', 'keygen', file('alice'))
    expect(readFileSync(file('alice.key'), 'utf8')).toBe(key)
  })

  it('conflicts --json and resolve', () => {
    const a = device('a')
    const b = device('b')
    sql(a.db, "INSERT INTO todos VALUES (1, 'milk', 0)")
    ok('export', a.db, file('ab.bundle'), '--for', b.site)
    ok('import', b.db, file('ab.bundle'))
    sql(a.db, "UPDATE todos SET title = 'oat milk' WHERE id = 1")
    sql(b.db, "UPDATE todos SET title = 'soy milk' WHERE id = 1")
    ok('export', b.db, file('ba.bundle'), '--for', a.site)
    expect(ok('import', a.db, file('ba.bundle'))).toMatch(/1 new conflict/)

    const conflicts = json(ok('conflicts', a.db, '--json')) as Record<string, unknown>[]
    expect(conflicts).toHaveLength(1)
    const c = conflicts[0] as Record<string, unknown>
    expect(c).toEqual({
      id: expect.any(Number),
      table: 'todos',
      pk: [1],
      column: 'title',
      kind: 'update',
      kept: expect.any(String),
      lost: expect.any(String),
      keptSite: expect.stringMatching(HEX32),
      lostSite: expect.stringMatching(HEX32),
      keptAt: expect.any(Number),
      lostAt: expect.any(Number),
      recordedAt: expect.any(Number),
    })
    expect(new Set([c.kept, c.lost])).toEqual(new Set(['oat milk', 'soy milk']))
    expect(ok('conflicts', a.db)).toMatch(new RegExp(`conflict ${c.id}: todos \\(1\\) column title`))
    expect((json(ok('status', a.db, '--json')) as { conflicts: number }).conflicts).toBe(1)

    ok('resolve', a.db, String(c.id), 'restore')
    expect(todos(a.db)).toEqual([{ id: 1, title: c.lost, done: 0 }])
    expect(json(ok('conflicts', a.db, '--json'))).toEqual([])
    expect(ok('conflicts', a.db)).toBe('no unresolved conflicts\n')
    fails('NO_SUCH_CONFLICT', 'resolve', a.db, String(c.id), 'keep')

    // The restored value is a new write: it syncs.
    ok('export', a.db, file('ab2.bundle'), '--for', b.site)
    ok('import', b.db, file('ab2.bundle'))
    expect(todos(b.db)).toEqual(todos(a.db))
  })
})

describe('converge: conflict values in JSON', () => {
  it('tags what JSON cannot hold exactly: blobs and integers beyond 2^53', () => {
    const a = device('a')
    const b = device('b')
    sql(a.db, "INSERT INTO todos VALUES (1, 'x', 0)")
    ok('export', a.db, file('ab.bundle'))
    ok('import', b.db, file('ab.bundle'))
    sql(a.db, 'UPDATE todos SET done = 1152921504606846977 WHERE id = 1')
    sql(b.db, "UPDATE todos SET done = x'00ff' WHERE id = 1")
    ok('export', b.db, file('ba.bundle'))
    ok('import', a.db, file('ba.bundle'))
    const [c, ...rest] = json(ok('conflicts', a.db, '--json')) as { column: string; kept: unknown; lost: unknown }[]
    expect(rest).toEqual([])
    expect(c?.column).toBe('done')
    expect([c?.kept, c?.lost]).toEqual(expect.arrayContaining([{ integer: '1152921504606846977' }, { blob: '00ff' }]))
    const human = ok('conflicts', a.db)
    expect(human).toContain("X'00ff'")
    expect(human).toContain('1152921504606846977')
  })
})

describe('converge: sneakernet', () => {
  it('three devices that never meet all together converge, with concurrent edits and deletes', () => {
    const a = device('a')
    const b = device('b')
    const c = device('c')
    sql(a.db, "INSERT INTO todos VALUES (1, 'milk', 0), (2, 'bread', 0), (3, 'eggs', 0)")

    // A -> B -> C: C gets A's rows without ever meeting A.
    ok('export', a.db, file('ab1.bundle'), '--for', b.site)
    ok('import', b.db, file('ab1.bundle'))
    ok('export', b.db, file('bc1.bundle'), '--for', c.site)
    ok('import', c.db, file('bc1.bundle'))
    expect(todos(c.db)).toEqual(todos(a.db))

    // Offline, concurrently: A and C edit the same cell, B deletes a row A edits.
    sql(a.db, "UPDATE todos SET title = 'oat milk' WHERE id = 1; UPDATE todos SET done = 1 WHERE id = 2")
    sql(c.db, "UPDATE todos SET title = 'almond milk' WHERE id = 1; INSERT INTO todos VALUES (4, 'jam', 0)")
    sql(b.db, "DELETE FROM todos WHERE id = 2; INSERT INTO todos VALUES (5, 'tea', 0)")

    // Around the ring: C -> A, A -> B, B -> C, C -> A, each bundle for the next device only.
    ok('export', c.db, file('ca1.bundle'), '--for', a.site)
    ok('import', a.db, file('ca1.bundle'))
    ok('export', a.db, file('ab2.bundle'), '--for', b.site)
    ok('import', b.db, file('ab2.bundle'))
    ok('export', b.db, file('bc2.bundle'), '--for', c.site)
    ok('import', c.db, file('bc2.bundle'))
    ok('export', c.db, file('ca2.bundle'), '--for', a.site)
    ok('import', a.db, file('ca2.bundle'))

    const final = todos(a.db) as { id: number; title: string }[]
    expect(todos(b.db)).toEqual(final)
    expect(todos(c.db)).toEqual(final)
    expect(final.map((r) => r.id)).toEqual([1, 3, 4, 5])
    expect(['oat milk', 'almond milk']).toContain(final[0]?.title)

    // A held both titles: the one that lost is in its conflict log.
    const conflicts = json(ok('conflicts', a.db, '--json')) as { id: number; column: string; kind: string }[]
    const title = conflicts.find((x) => x.kind === 'update' && x.column === 'title')
    const lost = final[0]?.title === 'oat milk' ? 'almond milk' : 'oat milk'
    expect(title).toMatchObject({ table: 'todos', pk: [1], kept: final[0]?.title, lost })
    expect(ok('conflicts', a.db)).toMatch(/column title/)
    const status = json(ok('status', a.db, '--json')) as { peers: { siteId: string }[] }
    expect(status.peers.map((p) => p.siteId)).toEqual([c.site])

    // A restores the lost title. C has sent to A, and B to C, so A knows what C holds and
    // C what B holds: the bundles along A -> C -> B carry only the new write.
    ok('resolve', a.db, String(title?.id), 'restore')
    expect(exported(ok('export', a.db, file('ac.bundle'), '--for', c.site))).toBe(1)
    expect(exported(ok('export', a.db, file('a-all.bundle')))).toBe(5) // 4 rows and row 2's tombstone
    ok('import', c.db, file('ac.bundle'))
    expect(exported(ok('export', c.db, file('cb.bundle'), '--for', b.site))).toBe(1)
    ok('import', b.db, file('cb.bundle'))
    for (const db of [a.db, b.db, c.db]) expect(todos(db)).toEqual([{ id: 1, title: lost, done: 0 }, ...final.slice(1)])
  })

  it('a snapshot brings a new device up to date', () => {
    const a = device('a')
    sql(a.db, "INSERT INTO todos VALUES (1, 'keep', 0), (2, 'gone', 0); DELETE FROM todos WHERE id = 2")
    ok('export', a.db, file('snap.bundle'), '--snapshot')
    const d = device('d')
    ok('import', d.db, file('snap.bundle'))
    expect(todos(d.db)).toEqual([{ id: 1, title: 'keep', done: 0 }])
  })

  it('writes made with the sqlite3 shell between commands sync', () => {
    if (!existsSync(SQLITE3)) {
      console.warn(`skipped: no sqlite3 shell at ${SQLITE3}`)
      return
    }
    const shell = (db: string, statements: string) => {
      const r = spawnSync(SQLITE3, [db, statements], { encoding: 'utf8' })
      expect(r.status, r.stderr).toBe(0)
    }
    const a = file('a.db')
    const b = file('b.db')
    ok('init', a)
    const bSite = ok('init', b).trim()
    shell(a, TODOS_DDL)
    shell(b, TODOS_DDL)
    ok('enable', a, 'todos')
    ok('enable', b, 'todos')
    shell(a, "INSERT INTO todos VALUES (1, 'from the shell', 0); INSERT INTO todos VALUES (2, 'second', 0)")
    ok('export', a, file('ab.bundle'), '--for', bSite)
    expect(ok('import', b, file('ab.bundle'))).toMatch(/^imported [1-9]/)
    expect(todos(b)).toEqual(todos(a))

    shell(
      b,
      "UPDATE todos SET done = 1 WHERE id = 1; DELETE FROM todos WHERE id = 2; INSERT INTO todos VALUES (3, 'third', 0)",
    )
    ok('export', b, file('ba.bundle'))
    ok('import', a, file('ba.bundle'))
    expect(todos(a)).toEqual([
      { id: 1, title: 'from the shell', done: 1 },
      { id: 3, title: 'third', done: 0 },
    ])
  })
})

describe('converge: signed and encrypted bundles', () => {
  it('a signed bundle imports with --trust of its key; an encrypted one with its password', () => {
    const a = device('a')
    const b = device('b')
    ok('keygen', file('alice'))
    sql(a.db, "INSERT INTO todos VALUES (1, 'signed', 0)")
    ok('export', a.db, file('signed.bundle'), '--sign', file('alice.key'))
    ok('import', b.db, file('signed.bundle'), '--trust', file('alice.pub'))
    expect(todos(b.db)).toEqual(todos(a.db))

    sql(a.db, "INSERT INTO todos VALUES (2, 'secret', 0)")
    writeFileSync(file('pw'), 'correct horse battery staple\nignored second line\n')
    ok('export', a.db, file('secret.bundle'), '--for', b.site, '--password-file', file('pw'))
    expect(readFileSync(file('secret.bundle')).includes('secret')).toBe(false)
    ok('import', b.db, file('secret.bundle'), '--password-file', file('pw'))
    expect(todos(b.db)).toEqual(todos(a.db))
  })

  it('--encrypt asks for the password on the terminal, twice, without echo; import asks once', async () => {
    if (!existsSync(SCRIPT)) {
      console.warn(`skipped: no ${SCRIPT} to run the command on a pseudo-terminal`)
      return
    }
    const a = device('a')
    const b = device('b')
    sql(a.db, "INSERT INTO todos VALUES (1, 'typed', 0)")
    const out = await onTerminal(['export', a.db, file('typed.bundle'), '--encrypt'], ['s3cret', 's3cret'])
    expect(out.code, out.screen).toBe(0)
    expect(out.screen).toMatch(/Password: [\s\S]*Repeat password: [\s\S]*exported 1 change/)
    expect(out.screen).not.toContain('s3cret')
    const wrong = await onTerminal(['import', b.db, file('typed.bundle')], ['guess'])
    expect(wrong.code).toBe(1)
    expect(wrong.screen).toMatch(/error DECRYPT_FAILED: /)
    const right = await onTerminal(['import', b.db, file('typed.bundle')], ['s3cret'])
    expect(right.code, right.screen).toBe(0)
    expect(right.screen).not.toContain('s3cret')
    expect(todos(b.db)).toEqual(todos(a.db))
    const mismatch = await onTerminal(['export', a.db, file('x.bundle'), '--encrypt'], ['one', 'two'])
    expect(mismatch.code).toBe(1)
    expect(mismatch.screen).toMatch(/error BAD_ARGUMENT: the passwords do not match/)
  })

  it('--encrypt without --password-file needs a terminal: exit 2', () => {
    const a = device('a')
    const r = converge('export', a.db, file('x.bundle'), '--encrypt')
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(/^error NO_TERMINAL: .*--password-file/)
    expect(existsSync(file('x.bundle'))).toBe(false)
  })
})

describe('converge: bad bundles change nothing', () => {
  /** B holds rows of its own and a good bundle from A waits; each bad import must leave B as it was. */
  function setup() {
    const a = device('a')
    const b = device('b')
    sql(a.db, "INSERT INTO todos VALUES (1, 'from a', 0), (2, 'also from a', 1)")
    sql(b.db, "INSERT INTO todos VALUES (10, 'from b', 0)")
    ok('status', b.db) // folds B's pending writes, so only an import could change the file
    ok('export', a.db, file('good.bundle'), '--for', b.site)
    return { a, b, good: readFileSync(file('good.bundle')) }
  }

  function refused(db: string, code: string, ...args: string[]): void {
    const before = hash(db)
    fails(code, 'import', db, ...args)
    expect(hash(db)).toBe(before)
  }

  it('tampered and truncated', () => {
    const { b, good } = setup()
    const tampered = Buffer.from(good)
    const at = Math.floor(tampered.length / 2)
    tampered[at] = (tampered[at] as number) ^ 0x01
    writeFileSync(file('tampered.bundle'), tampered)
    refused(b.db, 'BAD_BUNDLE', file('tampered.bundle'))
    writeFileSync(file('truncated.bundle'), good.subarray(0, Math.floor(good.length * 0.6)))
    refused(b.db, 'BAD_BUNDLE', file('truncated.bundle'))
    writeFileSync(file('empty.bundle'), '')
    refused(b.db, 'BAD_BUNDLE', file('empty.bundle'))
    ok('import', b.db, file('good.bundle'))
  })

  it('re-imported', () => {
    const { b } = setup()
    ok('import', b.db, file('good.bundle'))
    refused(b.db, 'DUPLICATE_BUNDLE', file('good.bundle'))
  })

  it('wrong password', () => {
    const { a, b } = setup()
    writeFileSync(file('pw1'), 'right\n')
    writeFileSync(file('pw2'), 'wrong\n')
    ok('export', a.db, file('secret.bundle'), '--for', b.site, '--encrypt', '--password-file', file('pw1'))
    refused(b.db, 'DECRYPT_FAILED', file('secret.bundle'), '--password-file', file('pw2'))
    // No password and no terminal to ask on: wrong usage, and nothing changes.
    const before = hash(b.db)
    const r = converge('import', b.db, file('secret.bundle'))
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(/^error NO_TERMINAL: .*encrypted.*--password-file/)
    expect(hash(b.db)).toBe(before)
    ok('import', b.db, file('secret.bundle'), '--password-file', file('pw1'))
  })

  it('untrusted signer, or no signature when one is required', () => {
    const { a, b } = setup()
    ok('keygen', file('alice'))
    ok('keygen', file('mallory'))
    ok('export', a.db, file('signed.bundle'), '--for', b.site, '--sign', file('mallory.key'))
    refused(b.db, 'UNTRUSTED_BUNDLE', file('signed.bundle'), '--trust', file('alice.pub'))
    refused(b.db, 'UNTRUSTED_BUNDLE', file('good.bundle'), '--trust', file('alice.pub'))
    ok('import', b.db, file('signed.bundle'), '--trust', file('alice.pub'), '--trust', file('mallory.pub'))
  })

  it('a key file that is not a key', () => {
    const { b } = setup()
    writeFileSync(file('junk.pub'), 'not a key\n')
    refused(b.db, 'BAD_KEY', file('good.bundle'), '--trust', file('junk.pub'))
  })

  it('wrong schema', () => {
    const { b } = setup()
    const d = file('d.db')
    ok('init', d)
    // done is TEXT there and INTEGER here; the extra column due alone would not be a mismatch.
    sql(
      d,
      "CREATE TABLE todos (id INTEGER PRIMARY KEY, title TEXT, done TEXT, due TEXT); INSERT INTO todos VALUES (1, 'x', 'no', 'today')",
    )
    ok('enable', d, 'todos')
    ok('export', d, file('other.bundle'))
    refused(b.db, 'SCHEMA_MISMATCH', file('other.bundle'))
    expect(converge('import', b.db, file('other.bundle')).stderr).toMatch(/\btodos\b.*\bdone\b/)
  })
})

describe('converge: progress', () => {
  const ROWS = 20_000

  function bigDevice() {
    const a = device('a')
    const b = device('b')
    const values = Array.from({ length: ROWS }, (_, i) => `(${i + 1}, 'todo ${i + 1}', 0)`).join(', ')
    sql(a.db, `INSERT INTO todos VALUES ${values}`)
    return { a, b }
  }

  it('is quiet when output is piped', () => {
    const { a, b } = bigDevice()
    const out = converge('export', a.db, file('big.bundle'))
    expect(out.code).toBe(0)
    expect(out.stderr).toBe('')
    expect(exported(out.stdout)).toBeGreaterThanOrEqual(ROWS)
    const back = converge('import', b.db, file('big.bundle'))
    expect(back.code).toBe(0)
    expect(back.stderr).toBe('')
  })

  it('shows a bar on a terminal', async () => {
    if (!existsSync(SCRIPT)) {
      console.warn(`skipped: no ${SCRIPT} to run the command on a pseudo-terminal`)
      return
    }
    const { a, b } = bigDevice()
    const out = await onTerminal(['export', a.db, file('big.bundle')])
    expect(out.code, out.screen).toBe(0)
    expect(out.screen).toMatch(/exporting [\d,]+ changes/)
    expect(out.screen).toMatch(/exported 20,000 changes/)
    const back = await onTerminal(['import', b.db, file('big.bundle')])
    expect(back.code, back.screen).toBe(0)
    expect(back.screen).toMatch(/importing .*% \| [\d,]+\/20,000 changes/)
  })
})
