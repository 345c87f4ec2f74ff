// Demo: two replicas of a todo list edit offline, then converge by exchanging payloads.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openReplica } from 'sqlite-converge'

const dir = mkdtempSync(join(tmpdir(), 'converge-demo-'))
const show = (label, replica) => {
  console.log(`  ${label}:`)
  for (const row of replica.db.prepare('SELECT id, title, done FROM todos ORDER BY id').all()) {
    console.log(`    ${row.id}  ${row.done ? '[x]' : '[ ]'} ${row.title}`)
  }
}
/** One sync round in each direction, each side sending only what the other lacks. */
const sync = (a, b) => {
  const toB = b.importChanges(a.exportChanges(b.versionVector()))
  const toA = a.importChanges(b.exportChanges(a.versionVector()))
  console.log(`  laptop -> phone: ${toB.applied} changes, ${toB.conflicts} conflicts`)
  console.log(`  phone -> laptop: ${toA.applied} changes, ${toA.conflicts} conflicts`)
}

try {
  const laptop = openReplica(join(dir, 'laptop.db'))
  const phone = openReplica(join(dir, 'phone.db'))
  for (const r of [laptop, phone]) {
    r.db.exec(
      'CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY, title TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0)',
    )
    r.enableSync('todos')
  }
  console.log(`laptop site ${laptop.siteId}\nphone  site ${phone.siteId}\n`)

  console.log('1. The laptop writes a list with plain SQL, then syncs:')
  const add = laptop.db.prepare('INSERT INTO todos (id, title) VALUES (?, ?)')
  add.run('a', 'buy milk')
  add.run('b', 'call the plumber')
  add.run('c', 'water the plants')
  sync(laptop, phone)
  show('phone', phone)

  console.log('\n2. Both go offline and edit:')
  laptop.db.exec("UPDATE todos SET done = 1 WHERE id = 'a'")
  laptop.db.exec("UPDATE todos SET title = 'call the plumber before 5pm' WHERE id = 'b'")
  phone.db.exec("UPDATE todos SET title = 'call the electrician' WHERE id = 'b'")
  phone.db.exec("DELETE FROM todos WHERE id = 'c'")
  phone.db.exec("INSERT INTO todos (id, title) VALUES ('d', 'book train tickets')")
  show('laptop', laptop)
  show('phone', phone)

  console.log('\n3. Back online, they sync:')
  sync(laptop, phone)
  show('laptop', laptop)
  show('phone', phone)

  console.log('\n4. Nothing was lost: the conflict log keeps the overwritten title.')
  for (const r of [laptop, phone]) {
    for (const c of r.conflicts()) {
      console.log(
        `  on ${r === laptop ? 'laptop' : 'phone'}: ${c.table}.${c.column} of ${JSON.stringify(c.pk)} kept ${JSON.stringify(c.kept)}, lost ${JSON.stringify(c.lost)}`,
      )
    }
  }
  const same =
    JSON.stringify(laptop.db.prepare('SELECT * FROM todos ORDER BY id').all()) ===
    JSON.stringify(phone.db.prepare('SELECT * FROM todos ORDER BY id').all())
  console.log(`\nReplicas identical: ${same ? 'yes' : 'NO'}`)
  laptop.close()
  phone.close()
  if (!same) process.exitCode = 1
} finally {
  rmSync(dir, { recursive: true, force: true })
}
