// Main demo: the sync server on its embedded store, and two replicas ready to sync live.
import { mkdirSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { openReplica } from 'sqlite-converge'
import { createServer } from 'sqlite-converge/server'

const port = Number(process.env.PORT ?? 8787)
const dir = resolve(process.env.CONVERGE_DEMO_DIR ?? 'converge-demo')
mkdirSync(dir, { recursive: true })

// Two app databases with the same todos table, synced.
const files = ['alice.db', 'bob.db'].map((name) => join(dir, name))
for (const file of files) {
  const replica = openReplica(file)
  replica.db.exec(
    'CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY, title TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0)',
  )
  replica.enableSync('todos')
  replica.close()
}

const server = await createServer({ port, data: join(dir, 'server-data') })
const ws = `${server.url.replace(/^http/, 'ws')}/db/demo`
const [alice, bob] = files
console.log(`
sqlite-converge sync server on ${server.url} (status page: ${server.url}/)
Its store lives in ${join(dir, 'server-data')}.

Watch two replicas sync live, one command per terminal:

  npx converge watch ${alice} ${ws}
  npx converge watch ${bob} ${ws}

Then write to either file with plain SQL, from any program, for example:

  sqlite3 ${alice} "INSERT INTO todos (id, title) VALUES ('1', 'buy milk')"
  sqlite3 ${bob} "UPDATE todos SET done = 1 WHERE id = '1'"

and see the change arrive in the other terminal. Ctrl-C stops the server.
`)

const stop = async () => {
  await server.close()
  process.exit(0)
}
process.once('SIGINT', stop)
process.once('SIGTERM', stop)
