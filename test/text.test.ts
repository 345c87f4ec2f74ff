// Block-level text columns: the pure block join and line diff, and replicas editing
// shared notes with plain SQL.
import fc from 'fast-check'
import { openReplica, type Replica } from 'sqlite-converge'
import { afterEach, describe, expect, it } from 'vitest'
import {
  between,
  comparePositions,
  editBlocks,
  joinBlocks,
  type Position,
  type TextBlock,
  textValue,
} from '../src/core/text.js'
import { codeOf, SITE_POOL, settle, sync } from './helpers/replicas.js'

const SITES = ['s1', 's2', 's3'] as const

/** A position strictly increasing chain check helper. */
function ordered(ps: Position[]): boolean {
  return ps.every((p, i) => i === 0 || comparePositions(ps[i - 1] as Position, p) < 0)
}

const line = fc.constantFrom('a', 'b', 'c', 'milk', 'eggs', '', 'tea time', 'x y')
const text = fc.oneof(
  fc.constant(null),
  fc.array(line, { maxLength: 8 }).map((ls) => ls.join('\n')),
)

/** Blocks produced by a sequence of edits on one site, from nothing. */
function history(site: string, values: (string | null)[], start = 1): TextBlock[] {
  let blocks: TextBlock[] = []
  values.forEach((v, i) => {
    blocks = editBlocks(blocks, v, '\n', start + i, site)
  })
  return blocks
}

describe('positions', () => {
  it('between(a, b) sorts strictly between a and b, whatever the sites', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(30), fc.constantFrom(...SITES)), { minLength: 1, maxLength: 40 }), (ops) => {
        // Build a list by inserting at random places; it must stay strictly ordered.
        const list: Position[] = []
        for (const [at, site] of ops) {
          const i = at % (list.length + 1)
          const p = between(list[i - 1] ?? null, list[i] ?? null, site)
          list.splice(i, 0, p)
          if (!ordered(list)) return false
        }
        return true
      }),
      { numRuns: 300 },
    )
  })
})

describe('text blocks (pure)', () => {
  it('editBlocks then textValue gives back exactly the text written', () => {
    fc.assert(
      fc.property(fc.array(text, { minLength: 1, maxLength: 6 }), (values) => {
        let blocks: TextBlock[] = []
        values.forEach((v, i) => {
          blocks = editBlocks(blocks, v, '\n', i + 1, 's1')
          expect(textValue(blocks, '\n')).toBe(v)
        })
      }),
      { numRuns: 300 },
    )
  })

  it('joinBlocks is commutative, associative and idempotent', () => {
    const site = fc.constantFrom(...SITES)
    const branch = fc.tuple(site, fc.array(text, { minLength: 1, maxLength: 4 }))
    fc.assert(
      fc.property(fc.array(text, { maxLength: 3 }), branch, branch, branch, (common, x, y, z) => {
        const base = history('s0', common)
        const grow = ([s, values]: [string, (string | null)[]], start: number) => {
          let b: TextBlock[] = base
          values.forEach((v, i) => {
            b = editBlocks(b, v, '\n', start + i, s)
          })
          return b
        }
        const [a, b, c] = [grow(x, 100), grow(y, 200), grow(z, 300)]
        const v = (bs: readonly TextBlock[]) => JSON.stringify(bs)
        expect(v(joinBlocks(a, b))).toBe(v(joinBlocks(b, a)))
        expect(v(joinBlocks(joinBlocks(a, b), c))).toBe(v(joinBlocks(a, joinBlocks(b, c))))
        expect(joinBlocks(a, a)).toBe(a)
        expect(v(joinBlocks(joinBlocks(a, b), b))).toBe(v(joinBlocks(a, b)))
      }),
      { numRuns: 300 },
    )
  })

  it('edits of different lines on two sides both survive the join', () => {
    const base = history('s0', ['one\ntwo\nthree\nfour'])
    const a = editBlocks(base, 'ONE\ntwo\nthree\nfour', '\n', 10, 's1')
    const b = editBlocks(base, 'one\ntwo\nthree\nFOUR\nfive', '\n', 11, 's2')
    expect(textValue(joinBlocks(a, b), '\n')).toBe('ONE\ntwo\nthree\nFOUR\nfive')
  })
})

let open: Replica[] = []
afterEach(() => {
  for (const r of open) r.close()
  open = []
})

function note(i: number, delimiter?: string): Replica {
  const r = openReplica(':memory:', { siteId: SITE_POOL[i] as string })
  open.push(r)
  r.db.exec('CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT, body TEXT)')
  r.enableSync('notes', { columns: { body: delimiter ? { algorithm: 'text', delimiter } : 'text' } })
  return r
}

function body(r: Replica): string | null {
  return (r.db.prepare('SELECT body FROM notes WHERE id = 1').get() as { body: string | null }).body
}

function write(r: Replica, value: string | null): void {
  r.db.prepare('UPDATE notes SET body = ? WHERE id = 1').run(value)
}

/**
 * Two replicas that share note 1 holding `start`; then each edit, in order, is written on
 * replica 0 (a) or 1 (b) without syncing, and finally they exchange until quiet.
 */
function editApart(start: string, edits: readonly (readonly [0 | 1, string])[]): [Replica, Replica] {
  const ab: [Replica, Replica] = [note(0), note(1)]
  ab[0].db.prepare('INSERT INTO notes VALUES (1, ?, ?)').run('t', start)
  sync(ab[0], ab[1])
  for (const [i, text] of edits) write(ab[i], text)
  settle(ab, 4)
  return ab
}

describe('text columns between replicas', () => {
  it('two people editing different lines of a note both keep their edits', () => {
    const [a, b] = editApart('milk\neggs\nbread\ntea', [
      [0, 'oat milk\neggs\nbread\ntea'],
      [1, 'milk\neggs\nrye bread\ntea\ncoffee'],
    ])
    expect(body(a)).toBe('oat milk\neggs\nrye bread\ntea\ncoffee')
    expect(body(b)).toBe(body(a))
  })

  it('lines inserted at the same place on both sides are all kept, each side together, in site order', () => {
    const [a, b] = editApart('top\nbottom', [
      [1, 'top\nB1\nB2\nB3\nbottom'],
      [0, 'top\nA1\nA2\nbottom'],
    ])
    expect(body(a)).toBe('top\nA1\nA2\nB1\nB2\nB3\nbottom')
    expect(body(b)).toBe(body(a))
  })

  it('a line deleted on one side and another edited on the other: both effects stay', () => {
    const [a, b] = editApart('one\ntwo\nthree', [
      [0, 'one\nthree'],
      [1, 'one\ntwo\nTHREE'],
    ])
    expect(body(a)).toBe('one\nTHREE')
    expect(body(b)).toBe('one\nTHREE')
  })

  it('the same line edited on both sides: the later edit wins, the other goes to the conflict log and can be restored', () => {
    const [a, b] = editApart('one\ntwo\nthree', [
      [0, 'one\ntwo (a)\nthree'],
      [1, 'ONE\ntwo (b)\nthree'],
    ])
    expect(body(a)).toBe('ONE\ntwo (b)\nthree') // b's edit is later
    expect(body(b)).toBe(body(a))
    // Both replicas log the lost line, as the whole note with that line as it was written.
    for (const r of [a, b]) {
      expect(r.conflicts()).toMatchObject([
        { table: 'notes', column: 'body', kind: 'update', kept: 'ONE\ntwo (b)\nthree', lost: 'ONE\ntwo (a)\nthree' },
      ])
    }
    // A sequential edit of a line someone else wrote is not a conflict.
    write(a, 'ONE\ntwo (b), then a\nthree')
    settle([a, b], 4)
    expect(b.conflicts()).toHaveLength(1)
    // Restoring brings the lost line back as a new edit, everywhere.
    const [c] = a.conflicts()
    a.resolveConflict((c as { id: number }).id, 'restore')
    settle([a, b], 4)
    expect(body(b)).toBe('ONE\ntwo (a)\nthree')
  })

  it('works with another delimiter (paragraphs), NULL and the empty string', () => {
    const [a, b] = [note(0, '\n\n'), note(1, '\n\n')]
    a.db.prepare('INSERT INTO notes VALUES (1, ?, ?)').run('t', 'para one\nstill one\n\npara two')
    sync(a, b)
    write(a, 'para one\nstill one, edited\n\npara two')
    write(b, 'para one\nstill one\n\npara two\n\npara three')
    settle([a, b], 4)
    expect(body(a)).toBe('para one\nstill one, edited\n\npara two\n\npara three')
    write(a, null)
    settle([a, b], 4)
    expect(body(b)).toBeNull()
    write(b, '')
    settle([a, b], 4)
    expect(body(a)).toBe('')
  })

  it('refuses values that are not TEXT or NULL, and a delimiter that differs between replicas', () => {
    const a = note(0)
    a.db.prepare('INSERT INTO notes VALUES (1, ?, ?)').run('t', 'x')
    expect(() => a.db.prepare('UPDATE notes SET body = ?').run(Buffer.from([1]))).toThrow(/text column/)
    const other = note(1, '\n\n')
    expect(codeOf(() => other.importChanges(a.exportChanges()))).toBe('SCHEMA_MISMATCH')
    expect(codeOf(() => note(2).enableSync('notes', { columns: { body: { algorithm: 'text', delimiter: '' } } }))).toBe(
      'BAD_ARGUMENT',
    )
  })

  it('three replicas editing a note at random converge, under any exchange order and duplicates', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.oneof(
            fc.record({ kind: fc.constant('edit' as const), who: fc.nat(2), line: fc.nat(6), word: line }),
            fc.record({ kind: fc.constant('drop' as const), who: fc.nat(2), line: fc.nat(6) }),
            fc.record({ kind: fc.constant('sync' as const), from: fc.nat(2), to: fc.nat(2), replay: fc.boolean() }),
          ),
          { maxLength: 25 },
        ),
        (ops) => {
          const rs = [note(0), note(1), note(2)]
          rs[0]?.db.prepare('INSERT INTO notes VALUES (1, ?, ?)').run('t', 'l0\nl1\nl2')
          settle(rs, 4)
          const sent: [Replica, Uint8Array][] = []
          for (const op of ops) {
            if (op.kind === 'sync') {
              const from = rs[op.from] as Replica
              const to = rs[op.to] as Replica
              if (from === to) continue
              if (op.replay && sent.length) {
                const [target, old] = sent[op.from % sent.length] as [Replica, Uint8Array]
                target.importChanges(old)
              }
              const payload = from.exportChanges(to.versionVector())
              sent.push([to, payload])
              to.importChanges(payload)
              continue
            }
            const r = rs[op.who] as Replica
            const lines = (body(r) ?? '').split('\n')
            const at = op.line % (lines.length + 1)
            if (op.kind === 'edit') {
              if (at < lines.length) lines[at] = op.word
              else lines.push(op.word)
            } else lines.splice(at, 1)
            write(r, lines.join('\n'))
          }
          settle(rs, 4)
          expect(body(rs[1] as Replica)).toBe(body(rs[0] as Replica))
          expect(body(rs[2] as Replica)).toBe(body(rs[0] as Replica))
          for (const r of rs.splice(0)) {
            r.close()
            open = open.filter((x) => x !== r)
          }
        },
      ),
      { numRuns: 60 },
    )
  })
})
