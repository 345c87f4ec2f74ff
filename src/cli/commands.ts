/** The `converge` commands: arguments and options of each, and what each does with a replica. */
import { existsSync, readFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { Argument, Command, InvalidArgumentError, Option } from 'commander'
import {
  type BundleImportResult,
  type ColumnAlgorithm,
  type Conflict,
  isConvergeError,
  openReplica,
  type Replica,
  type RowMode,
} from '../index.js'
import { readPrivateKey, readPublicKey, writeKeyPair } from './keys.js'
import { CliError, jsonValue, printJson, showValue } from './output.js'
import { askPassword, readPasswordFile } from './password.js'
import { withProgress } from './progress.js'

const SITE_RE = /^[0-9a-f]{32}$/

/** Builds the `converge` program; usage errors throw a `CommanderError` instead of exiting. */
export function buildProgram(): Command {
  const program = new Command('converge')
    .description('Sync ordinary SQLite databases through bundle files: export, carry, import, converge.')
    .version(packageVersion())
    .exitOverride()
    .showHelpAfterError()
    .addHelpText(
      'after',
      '\nExit status: 0 on success, 1 on failure (stderr: "error CODE: explanation"), 2 on wrong usage.',
    )

  program
    .command('init')
    .description('create or open a replica and print its site id')
    .argument('<db>', 'database file (created if missing)')
    .action((db: string) => withReplica(db, { create: true }, (r) => console.log(r.siteId)))

  program
    .command('enable')
    .description('enable sync on tables (idempotent); each needs a primary key')
    .argument('<db>', 'database file')
    .argument('<table...>', 'tables to sync')
    .option('--counter <column>', 'merge this column as a counter (repeatable)', collect, [])
    .option('--text <column>', 'merge this column as block-level text, by lines (repeatable)', collect, [])
    .option('--rows <mode>', 'row mode: causal, add-wins, delete-wins or grow-only')
    .action((db: string, tables: string[], opts: { counter?: string[]; text?: string[]; rows?: RowMode }) =>
      withReplica(db, {}, (r) => {
        const columns: Record<string, ColumnAlgorithm> = {}
        for (const c of opts.counter ?? []) columns[c] = 'counter'
        for (const c of opts.text ?? []) columns[c] = 'text'
        const custom = Object.keys(columns).length > 0 || opts.rows !== undefined
        for (const table of tables) {
          r.enableSync(table, custom ? { columns, ...(opts.rows && { rows: opts.rows }) } : undefined)
          console.log(`syncing ${table}`)
        }
      }),
    )

  program
    .command('compact')
    .description('drop the tombstones every known peer has seen')
    .argument('<db>', 'database file')
    .option('--forget <site>', 'stop waiting for this peer first (repeatable)', collect, [])
    .option('--json', 'print JSON: { "tombstones": n, "forgotten": [...] }')
    .action((db: string, opts: { forget?: string[]; json?: boolean }) =>
      withReplica(db, {}, (r) => {
        const forgotten = (opts.forget ?? []).filter((site) => r.forgetPeer(site))
        const { tombstones } = r.compact()
        if (opts.json) printJson({ tombstones, forgotten })
        else console.log(`dropped ${tombstones} tombstone${tombstones === 1 ? '' : 's'}`)
      }),
    )

  program
    .command('status')
    .description('show site id, synced tables, row counts, version vector, peers and unresolved conflicts')
    .argument('<db>', 'database file')
    .option('--json', 'print JSON (shape in the README)')
    .action((db: string, opts: { json?: boolean }) => withReplica(db, {}, (r) => printStatus(r, opts.json === true)))

  program
    .command('export')
    .description('write the changes a peer lacks (by default everything) to a bundle file')
    .argument('<db>', 'database file')
    .argument('<file>', 'bundle file to write')
    .addOption(
      new Option('--for <site>', 'only what this peer (site id) lacks, judged by its last bundle to us').argParser(
        siteId,
      ),
    )
    .addOption(new Option('--snapshot', 'the current state only: live rows, no deletions').conflicts('for'))
    .option('--sign <keyfile>', 'sign with the private key of `converge keygen` (a .key file)')
    .option('--encrypt', 'encrypt with a password, asked on the terminal')
    .addOption(
      new Option('--password-file <file>', 'encrypt with the first line of this file as password').implies({
        encrypt: true,
      }),
    )
    .action(exportBundle)

  program
    .command('import')
    .description('merge a bundle file into the database (all or nothing)')
    .argument('<db>', 'database file')
    .argument('<file>', 'bundle file to read')
    .option('--trust <pubkeyfile>', 'accept only bundles signed by this key (a .pub file); repeatable', collect, [])
    .option('--password-file <file>', 'password of an encrypted bundle, first line of this file')
    .action(importBundle)

  program
    .command('conflicts')
    .description('list unresolved conflicts: concurrent writes that lost a merge')
    .argument('<db>', 'database file')
    .option('--json', 'print JSON (shape in the README)')
    .action((db: string, opts: { json?: boolean }) =>
      withReplica(db, {}, (r) => printConflicts(db, r.conflicts(), opts.json === true)),
    )

  program
    .command('resolve')
    .description('close a conflict: keep the merged value, or restore the lost one (syncs as a new write)')
    .argument('<db>', 'database file')
    .argument('<id>', 'conflict id (from `converge conflicts`)', conflictId)
    .addArgument(new Argument('<resolution>', 'keep or restore').choices(['keep', 'restore']))
    .action((db: string, id: number, resolution: 'keep' | 'restore') =>
      withReplica(db, {}, (r) => {
        r.resolveConflict(id, resolution)
        console.log(
          `conflict ${id} resolved: ${resolution === 'keep' ? 'kept the merged value' : 'restored the lost value'}`,
        )
      }),
    )

  program
    .command('keygen')
    .description('create an Ed25519 key pair for signing bundles: <name>.key (private) and <name>.pub')
    .argument('<name>', 'path without extension')
    .action((name: string) => {
      const { privateFile, publicFile } = writeKeyPair(name)
      console.log(`wrote ${privateFile} (private: keep it secret) and ${publicFile} (give it to peers for --trust)`)
    })

  program
    .command('serve')
    .description('run the sync server: databases under --data, credentials and limits from --config')
    .option('--port <port>', 'port (0: any free port)', portNumber, 8787)
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--data <dir>', 'directory of the database files', './converge-data')
    .option('--config <file>', 'JSON configuration: databases, apiKeys, jwt, maxPayloadBytes, rateLimit')
    .action(serve)

  program
    .command('sync')
    .description('sync a database with a sync server once: send what it lacks, merge its answer')
    .argument('<db>', 'database file')
    .argument('<url>', 'http(s)://HOST:PORT/db/NAME')
    .option('--token <token>', 'API key or JWT (default: $CONVERGE_TOKEN)')
    .option('--json', 'print the result as JSON')
    .action((db: string, url: string, opts: { token?: string; json?: boolean }) =>
      withReplica(db, {}, async (r) => {
        const token = opts.token ?? process.env.CONVERGE_TOKEN
        const result = await r.sync(url, token === undefined ? {} : { token })
        if (opts.json) return printJson(result)
        const tables = result.receive.tables.length ? ` (${result.receive.tables.join(', ')})` : ''
        console.log(
          `synced: sent ${plural(result.send.rows, 'row')}, received ${plural(result.receive.rows, 'row')}${tables}, ` +
            `${plural(result.receive.conflicts, 'new conflict')}; local version ${result.send.localVersion}, server version ${result.send.serverVersion}`,
        )
      }),
    )

  program
    .command('watch')
    .description('live sync: push local commits and print remote changes as they arrive, until Ctrl-C')
    .argument('<db>', 'database file')
    .argument('<url>', 'ws(s)://HOST:PORT/db/NAME (http(s):// works too)')
    .option('--token <token>', 'API key or JWT (default: $CONVERGE_TOKEN)')
    .action((db: string, url: string, opts: { token?: string }) =>
      withReplica(db, {}, async (r) => {
        const token = opts.token ?? process.env.CONVERGE_TOKEN
        const session = r.connect(url, token === undefined ? {} : { token })
        session.on('status', (s) => {
          console.log(s.error ? `${s.state}: ${s.error.code}: ${s.error.message}` : s.state)
        })
        session.on('change', (c) => {
          const parts = Object.entries(c.rows).map(([table, n]) => `${plural(n, 'row')} in ${table}`)
          const conflicts = c.conflicts > 0 ? `, ${plural(c.conflicts, 'new conflict')}` : ''
          console.log(`received ${parts.join(', ')}${conflicts}`)
        })
        await new Promise<void>((done) => {
          const stop = () => {
            process.off('SIGINT', stop)
            process.off('SIGTERM', stop)
            done()
          }
          process.on('SIGINT', stop)
          process.on('SIGTERM', stop)
        })
        await session.close()
      }),
    )

  return program
}

async function serve(opts: { port: number; host: string; data: string; config?: string }): Promise<void> {
  const { createServer } = await import('../server/index.js')
  const { pino } = await import('pino')
  let config: unknown
  if (opts.config !== undefined) {
    try {
      config = JSON.parse(readFileSync(opts.config, 'utf8'))
    } catch (err) {
      if ((err as { code?: unknown }).code) throw err
      throw new CliError('BAD_ARGUMENT', `${opts.config} is not valid JSON: ${(err as Error).message}`)
    }
  }
  // Logs go to stderr; stdout carries one line with the URL, for scripts.
  const logger = pino(pino.destination(2))
  const server = await createServer({
    host: opts.host,
    port: opts.port,
    data: opts.data,
    logger,
    ...(config !== undefined && { config: config as object }),
  })
  console.log(`converge server listening on ${server.url}`)
  await new Promise<void>((done) => {
    const stop = () => {
      process.off('SIGINT', stop)
      process.off('SIGTERM', stop)
      void server.close().then(done)
    }
    process.on('SIGINT', stop)
    process.on('SIGTERM', stop)
  })
}

function portNumber(value: string): number {
  if (!/^[0-9]{1,5}$/.test(value) || Number(value) > 65535) {
    throw new InvalidArgumentError('a port is an integer from 0 to 65535.')
  }
  return Number(value)
}

interface ExportOptions {
  for?: string
  snapshot?: boolean
  sign?: string
  encrypt?: boolean
  passwordFile?: string
}

async function exportBundle(db: string, file: string, opts: ExportOptions): Promise<void> {
  const privateKey = opts.sign === undefined ? undefined : readPrivateKey(opts.sign)
  let password: string | undefined
  if (opts.passwordFile !== undefined) password = readPasswordFile(opts.passwordFile)
  else if (opts.encrypt) password = await askPassword('--encrypt', true)
  await withReplica(db, {}, (r) => {
    const result = withProgress('exporting', (onProgress) =>
      r.exportBundle(file, {
        ...(opts.for !== undefined && { for: opts.for }),
        ...(opts.snapshot && { snapshot: true }),
        ...(privateKey && { sign: { privateKey } }),
        ...(password !== undefined && { encrypt: { password } }),
        onProgress,
      }),
    )
    console.log(`exported ${plural(result.changes, 'change')} (${plural(result.bytes, 'byte')}) to ${file}`)
  })
}

interface ImportOptions {
  trust: string[]
  passwordFile?: string
}

async function importBundle(db: string, file: string, opts: ImportOptions): Promise<void> {
  const trust = opts.trust.map(readPublicKey)
  const password = opts.passwordFile === undefined ? undefined : readPasswordFile(opts.passwordFile)
  await withReplica(db, {}, async (r) => {
    const run = (secret: string | undefined) =>
      withProgress('importing', (onProgress) =>
        r.importBundle(file, {
          ...(secret !== undefined && { password: secret }),
          ...(trust.length > 0 && { trust }),
          onProgress,
        }),
      )
    let result: BundleImportResult
    try {
      result = run(password)
    } catch (err) {
      // Without --password-file, an encrypted bundle fails before anything is read into
      // the database; ask for the password and try once more.
      if (password !== undefined || !isConvergeError(err, 'DECRYPT_FAILED')) throw err
      result = run(await askPassword(`${file} is encrypted`, false))
    }
    if (result.duplicate) {
      throw new CliError('DUPLICATE_BUNDLE', `${file} (from site ${result.from}) was already imported; nothing changed`)
    }
    console.log(`imported ${plural(result.applied, 'change')} from site ${result.from}`)
    if (result.conflicts > 0) {
      console.log(`${plural(result.conflicts, 'new conflict')}: see converge conflicts ${db}`)
    }
  })
}

function printStatus(r: Replica, json: boolean): void {
  const vector = r.versionVector()
  const tables = r.syncedTables().map((name) => ({ name, rows: rowCount(r, name) }))
  const peers = r.peers().map((p) => ({ siteId: p.siteId, vector: p.vector, lastSeen: p.lastSeen }))
  const conflicts = r.conflicts().length
  if (json) {
    printJson({ siteId: r.siteId, tables, versionVector: vector, peers, conflicts })
    return
  }
  const lines: [string, string][] = [['site', r.siteId]]
  for (const t of tables) lines.push(['tables', `${t.name}: ${plural(t.rows, 'row')}`])
  for (const [site, hlc] of Object.entries(vector)) lines.push(['vector', `${site}: ${hlc}`])
  for (const p of peers) lines.push(['peers', `${p.siteId}: last seen ${new Date(p.lastSeen).toISOString()}`])
  lines.push(['conflicts', `${conflicts} unresolved`])
  let previous = ''
  for (const [label, text] of lines) {
    console.log(`${(label === previous ? '' : label).padEnd(10)} ${text}`)
    previous = label
  }
}

function printConflicts(db: string, conflicts: Conflict[], json: boolean): void {
  if (json) {
    // Field by field, so the printed shape stays what the README documents.
    printJson(
      conflicts.map((c) => ({
        id: c.id,
        table: c.table,
        pk: c.pk.map(jsonValue),
        column: c.column,
        kind: c.kind,
        kept: jsonValue(c.kept),
        lost: jsonValue(c.lost),
        keptSite: c.keptSite,
        lostSite: c.lostSite,
        keptAt: c.keptAt,
        lostAt: c.lostAt,
        recordedAt: c.recordedAt,
      })),
    )
    return
  }
  if (conflicts.length === 0) {
    console.log('no unresolved conflicts')
    return
  }
  for (const c of conflicts) {
    const kept = c.kind === 'delete' ? 'row deleted' : `kept ${showValue(c.kept)}`
    console.log(`conflict ${c.id}: ${c.table} (${c.pk.map(showValue).join(', ')}) column ${c.column}`)
    console.log(`  ${kept} by site ${c.keptSite} at ${new Date(c.keptAt).toISOString()}`)
    console.log(`  lost ${showValue(c.lost)} by site ${c.lostSite} at ${new Date(c.lostAt).toISOString()}`)
  }
  console.log(`resolve each with: converge resolve ${db} <id> keep|restore`)
}

/**
 * Opens the replica at `db`, runs `fn`, and closes it. Only `init` may create the file, so
 * a mistyped path fails instead of leaving an empty database behind.
 */
async function withReplica(
  db: string,
  how: { create?: boolean },
  fn: (r: Replica) => void | Promise<void>,
): Promise<void> {
  if (!how.create && !existsSync(db)) {
    throw new CliError('NO_SUCH_DATABASE', `${db} does not exist; create it with: converge init ${db}`)
  }
  if (!existsSync(dirname(db))) throw new CliError('ENOENT', `no such directory: ${dirname(db)}`)
  const replica = openReplica(db)
  try {
    await fn(replica)
  } finally {
    replica.close()
  }
}

function rowCount(r: Replica, table: string): number {
  const row = r.db.prepare(`SELECT count(*) AS n FROM "${table.replaceAll('"', '""')}"`).get() as { n: number }
  return row.n
}

function siteId(value: string): string {
  if (!SITE_RE.test(value)) throw new InvalidArgumentError('a site id is 32 lowercase hex characters.')
  return value
}

function conflictId(value: string): number {
  if (!/^[1-9][0-9]*$/.test(value) || !Number.isSafeInteger(Number(value))) {
    throw new InvalidArgumentError('a conflict id is a positive integer.')
  }
  return Number(value)
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value]
}

function plural(n: number, noun: string): string {
  return `${n.toLocaleString('en-US')} ${noun}${n === 1 ? '' : 's'}`
}

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
  return pkg.version
}
