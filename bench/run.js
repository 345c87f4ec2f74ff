/** Benchmark harness: sqlite-converge against plain SQLite on a 100k-row table, plus a 1M-row memory run. */
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import Database from 'better-sqlite3'
import { openReplica } from 'sqlite-converge'
import { exportChangedOnly } from '../dist/replica/replica.js'
import { generateRows, insertRows, openSynced, SCHEMA } from './workload.js'

const ROWS = 100_000
const BIG_ROWS = 1_000_000
const RUNS = 3
const UPDATE = 'UPDATE todos SET done = 1 - done'

const args = new Set(process.argv.slice(2))
const json = args.has('--json')
const quick = args.has('--quick')

/** Progress goes to stderr so that `--json` leaves stdout to the document alone. */
function progress(message) {
  process.stderr.write(`${message}\n`)
}

function updateAll(db) {
  const update = db.transaction(() => db.prepare(UPDATE).run())
  const start = performance.now()
  update()
  return performance.now() - start
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]
}

function collectGarbage() {
  globalThis.gc?.()
}

/** A fresh plain WAL database holding the empty todos table. */
function openPlain(file) {
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  db.exec(SCHEMA)
  return db
}

/** Sum of the raw bytes of the values: UTF-8 text lengths plus 8 bytes per integer. */
function rawValueBytes(rows) {
  let total = 0
  for (const [id, title, , body] of rows) {
    total += Buffer.byteLength(id) + Buffer.byteLength(title) + 8 + Buffer.byteLength(body)
  }
  return total
}

/** Row count and sha256 of every row of todos in key order. */
function tableDigest(db) {
  const hash = createHash('sha256')
  let count = 0
  for (const row of db.prepare('SELECT * FROM todos ORDER BY id').raw().iterate()) {
    hash.update(JSON.stringify(row))
    count++
  }
  return { count, sha256: hash.digest('hex') }
}

/** Main file size after moving the WAL into it. */
function checkpointedSize(db, file) {
  db.pragma('wal_checkpoint(TRUNCATE)')
  return fs.statSync(file).size
}

/** Bytes of the pages used by the library's own tables and indexes, via the dbstat table. */
function metadataBytes(db) {
  const row = db
    .prepare(
      `SELECT sum(pgsize) AS bytes FROM dbstat
       WHERE name LIKE '\\_converge\\_%' ESCAPE '\\' OR name LIKE 'sqlite\\_autoindex\\_\\_converge\\_%' ESCAPE '\\'`,
    )
    .get()
  return row.bytes ?? 0
}

/** Bytes actually used (page size minus free space in pages) by the library's tables. */
function metadataUsedBytes(db) {
  const row = db
    .prepare(
      `SELECT sum(pgsize - unused) AS bytes FROM dbstat
       WHERE name LIKE '\\_converge\\_%' ESCAPE '\\' OR name LIKE 'sqlite\\_autoindex\\_\\_converge\\_%' ESCAPE '\\'`,
    )
    .get()
  return row.bytes ?? 0
}

/**
 * Compaction: 200k rows, 100k of them deleted and the deletes seen by the only peer; the
 * metadata bytes per live cell before and after compact().
 */
function measureCompaction(dir, rows) {
  const open = (name) => {
    const r = openReplica(path.join(dir, name), { autoCompact: false })
    r.db.exec(SCHEMA)
    r.enableSync('todos')
    return r
  }
  const a = open('compact-a.db')
  const b = open('compact-b.db')
  insertRows(a.db, rows)
  insertRows(a.db, generateRows(rows.length, rows.length))
  b.importChanges(a.exportChanges(b.versionVector()))
  a.db.exec(`DELETE FROM todos WHERE rowid IN (SELECT rowid FROM todos ORDER BY rowid LIMIT ${rows.length})`)
  b.importChanges(a.exportChanges(b.versionVector()))
  a.importChanges(b.exportChanges(a.versionVector()))
  const liveCells = a.db.prepare('SELECT count(*) AS n FROM todos').get().n * 3
  const before = metadataUsedBytes(a.db) / liveCells
  const [compactMs, result] = timed(() => a.compact())
  const after = metadataUsedBytes(a.db) / liveCells
  a.close()
  b.close()
  return [
    figure('metadata per live cell, 100k deletes', before, 'bytes', null, null),
    figure('  after compact()', after, 'bytes', null, null),
    figure('  compact() time', compactMs, 'ms', null, null),
    figure('  tombstones dropped', result.tombstones, 'rows', null, null),
  ]
}

/**
 * The import a live client makes for one row another client wrote, with 5 and 500 sites
 * known: the whole vector in the header, or only the entries that moved (what the sync
 * server sends live clients). Median of 200 imports, each of a payload exported for the
 * receiver's vector at that moment.
 */
function measureLiveImports() {
  const open = () => {
    const r = openReplica(':memory:')
    r.db.exec('CREATE TABLE events (id TEXT PRIMARY KEY, origin INTEGER NOT NULL, sent REAL NOT NULL)')
    r.enableSync('events')
    return r
  }
  const write = (r, id) => r.db.prepare('INSERT INTO events VALUES (?, ?, ?)').run(id, 1, Date.now())
  const out = []
  for (const sites of [5, 500]) {
    const server = open()
    for (let i = 0; i < sites; i++) {
      const w = open()
      write(w, `w${i}`)
      server.importChanges(w.exportChanges())
      w.close()
    }
    const writer = open()
    writer.importChanges(server.exportChanges())
    for (const changedOnly of [false, true]) {
      const client = open()
      client.importChanges(server.exportChanges())
      const ms = []
      let bytes = 0
      for (let i = 0; i < 200; i++) {
        write(writer, `${changedOnly}-${i}`)
        server.importChanges(writer.exportChanges(server.versionVector()))
        const since = client.versionVector()
        const p = changedOnly ? exportChangedOnly(server, since) : server.exportChanges(since)
        bytes += p.length
        const start = performance.now()
        client.importChanges(p)
        ms.push(performance.now() - start)
      }
      client.close()
      const how = changedOnly ? 'changed-only vector' : 'whole vector'
      out.push(figure(`one-row live import, ${sites} sites, ${how}`, median(ms), 'ms', null, null))
      out.push(figure(`  its payload`, bytes / 200, 'bytes', null, null))
    }
    writer.close()
    server.close()
  }
  return out
}

/** Runs bench/big.js in a child process; its last stdout line is a JSON result. */
function runChild(...childArgs) {
  const script = path.join(path.dirname(fileURLToPath(import.meta.url)), 'big.js')
  const child = spawnSync(process.execPath, ['--expose-gc', script, ...childArgs], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 1024 * 1024,
  })
  if (child.status !== 0) throw new Error(`big.js ${childArgs[0]} exited with ${child.status ?? child.signal}`)
  return JSON.parse(child.stdout.trim().split('\n').at(-1))
}

/** A measured figure; `target` bounds `ratio` when there is a baseline, else `value`. Null target: info only. */
function figure(name, value, unit, baseline, target) {
  const ratio = baseline === null ? null : value / baseline
  const bounded = ratio ?? value
  return { name, value, unit, baseline, ratio, target, pass: target === null ? null : bounded <= target }
}

function measureInsertUpdate(dir, rows) {
  const times = { plainInsert: [], syncedInsert: [], plainUpdate: [], syncedUpdate: [] }
  for (let run = 0; run < RUNS; run++) {
    const plain = openPlain(path.join(dir, `plain-${run}.db`))
    collectGarbage()
    times.plainInsert.push(insertRows(plain, rows))
    collectGarbage()
    times.plainUpdate.push(updateAll(plain))
    plain.close()

    const replica = openSynced(path.join(dir, `synced-${run}.db`))
    collectGarbage()
    times.syncedInsert.push(insertRows(replica.db, rows))
    collectGarbage()
    times.syncedUpdate.push(updateAll(replica.db))
    replica.close()
    progress(`  run ${run + 1}/${RUNS} done`)
  }
  return Object.fromEntries(Object.entries(times).map(([k, v]) => [k, median(v)]))
}

/** Milliseconds `fn` takes, after a collection; returns [ms, result]. */
function timed(fn) {
  collectGarbage()
  const start = performance.now()
  const result = fn()
  return [performance.now() - start, result]
}

function measureBig(dir) {
  const source = path.join(dir, 'big-source.db')
  const target = path.join(dir, 'big-target.db')
  progress(`building a ${BIG_ROWS.toLocaleString('en')}-row synced database (child process)...`)
  const build = runChild('build', source, String(BIG_ROWS))
  progress('exporting and importing it (fresh child process)...')
  const sync = runChild('sync', source, target)
  if (sync.targetRows !== BIG_ROWS) throw new Error(`1M import produced ${sync.targetRows} rows`)
  progress('the same through a signed bundle file (fresh child process)...')
  const bundle = runChild('bundle', source, path.join(dir, 'big-bundle-target.db'), path.join(dir, 'big.bundle'))
  if (bundle.targetRows !== BIG_ROWS) throw new Error(`1M bundle import produced ${bundle.targetRows} rows`)
  return [
    figure('6. peak RSS, export + import 1M rows', sync.maxRssMb, 'MB', null, 300),
    figure('peak RSS after export only (1M)', sync.exportRssMb, 'MB', null, null),
    figure('build 1M: insert', build.insertMs, 'ms', null, null),
    figure('build 1M: fold on close', build.closeMs, 'ms', null, null),
    figure('export 1M', sync.exportMs, 'ms', null, null),
    figure('import 1M', sync.importMs, 'ms', null, null),
    figure('payload 1M', sync.payloadBytes, 'bytes', null, null),
    figure('peak RSS, signed bundle file of 1M rows', bundle.maxRssMb, 'MB', null, 300),
    figure('peak RSS after bundle export only (1M)', bundle.exportRssMb, 'MB', null, null),
    figure('bundle 1M: export', bundle.exportMs, 'ms', null, null),
    figure('bundle 1M: import', bundle.importMs, 'ms', null, null),
    figure('bundle 1M: file', bundle.bundleBytes, 'bytes', null, null),
  ]
}

function run(dir) {
  progress(`generating ${ROWS.toLocaleString('en')} rows...`)
  const rows = generateRows(ROWS)
  progress(`insert + update, ${RUNS} runs each...`)
  const times = measureInsertUpdate(dir, rows)

  // Initial sync: the source holds 100k freshly inserted rows; its export folds their 100k
  // pending log rows, then a fresh replica imports everything.
  progress('export + import...')
  const plainFile = path.join(dir, 'plain.db')
  const plain = openPlain(plainFile)
  insertRows(plain, rows)
  const syncedFile = path.join(dir, 'source.db')
  const replica = openSynced(syncedFile)
  insertRows(replica.db, rows)
  const [exportMs, payload] = timed(() => replica.exportChanges())
  const target = openSynced(path.join(dir, 'target.db'))
  const [importMs, imported] = timed(() => target.importChanges(payload))
  const syncMs = exportMs + importMs

  const plainBytes = checkpointedSize(plain, plainFile)
  const syncedBytes = checkpointedSize(replica.db, syncedFile)
  const freePages = replica.db.pragma('freelist_count', { simple: true })
  const pageSize = replica.db.pragma('page_size', { simple: true })
  const metadataPerRow = metadataBytes(replica.db) / ROWS

  // Incremental sync: one column of every row updated, then only what the target lacks.
  progress('update all + incremental sync...')
  updateAll(replica.db)
  const [deltaExportMs, delta] = timed(() => replica.exportChanges(target.versionVector()))
  const [deltaImportMs] = timed(() => target.importChanges(delta))

  // A live push of one row from the 100k-row table: the source's connection tracks the keys
  // it writes since its last export; a second connection has no tracker and scans.
  progress('one-row exports from the 100k table...')
  const oneRow = replica.db.prepare('UPDATE todos SET done = 1 - done WHERE rowid = ?')
  const trackedMs = []
  for (let i = 1; i <= 5; i++) {
    const since = target.versionVector()
    oneRow.run(i)
    const [ms, p] = timed(() => replica.exportChanges(since))
    trackedMs.push(ms)
    target.importChanges(p)
  }
  const lastSince = target.versionVector()
  oneRow.run(6)
  replica.versionVector() // folds the write, so that the scan below only reads
  const second = openReplica(syncedFile)
  const [scanMs, scanned] = timed(() => second.exportChanges(lastSince))
  second.close()
  target.importChanges(scanned)

  const figures = [
    figure('1. insert 100k rows', times.syncedInsert, 'ms', times.plainInsert, 1.5),
    figure('2. update 1 column, 100k rows', times.syncedUpdate, 'ms', times.plainUpdate, 3),
    figure('3. export + import 100k rows', syncMs, 'ms', times.plainInsert, 3),
    figure('export 100k (folds 100k inserts)', exportMs, 'ms', null, null),
    figure('import 100k', importMs, 'ms', null, null),
    figure('merge rate (export + import)', ROWS / (syncMs / 1000), 'rows/s', null, null),
    figure('4. payload size', payload.length, 'bytes', rawValueBytes(rows), 1),
    figure('5. file size after export', syncedBytes, 'bytes', plainBytes, 1.5),
    figure('metadata per row (dbstat)', metadataPerRow, 'bytes', null, null),
    figure('free pages in synced file', freePages * pageSize, 'bytes', null, null),
    figure('sync 100k updated rows: export', deltaExportMs, 'ms', null, null),
    figure('sync 100k updated rows: import', deltaImportMs, 'ms', null, null),
    figure('sync 100k updated rows: payload', delta.length, 'bytes', null, null),
    figure('one-row export from 100k rows, tracked keys', median(trackedMs), 'ms', null, null),
    figure('  the same by a full scan (new connection)', scanMs, 'ms', null, null),
  ]

  const source = tableDigest(replica.db)
  const copy = tableDigest(target.db)
  const reference = tableDigest(plain)
  const correctness = {
    sourceRows: source.count,
    importedRows: copy.count,
    applied: imported.applied,
    conflicts: imported.conflicts,
    checksumsEqual: source.sha256 === copy.sha256,
    plainChecksumEqual: source.sha256 === reference.sha256,
    pass: source.count === ROWS && copy.count === ROWS && source.sha256 === copy.sha256,
  }
  plain.close()
  replica.close()
  target.close()

  progress('compaction...')
  figures.push(...measureCompaction(dir, rows))
  progress('one-row live imports among many sites...')
  figures.push(...measureLiveImports())
  if (!quick) figures.push(...measureBig(dir))
  return { figures, correctness }
}

function machine() {
  const cpus = os.cpus()
  return {
    node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    cpus: cpus.length,
    cpuModel: cpus[0]?.model ?? 'unknown',
    memoryMb: Math.round(os.totalmem() / 2 ** 20),
    sqlite: new Database(':memory:').prepare('SELECT sqlite_version() AS v').get().v,
    gc: typeof globalThis.gc === 'function',
  }
}

function formatNumber(value, unit) {
  if (value === null) return '-'
  if (unit === 'bytes') return value >= 2 ** 20 ? `${(value / 2 ** 20).toFixed(1)} MiB` : `${value.toFixed(1)} B`
  if (unit === 'rows/s') return `${Math.round(value).toLocaleString('en')} rows/s`
  if (unit === 'ms' && value < 10) return `${value.toFixed(2)} ms`
  return `${value.toFixed(unit === 'ms' || unit === 'rows' ? 0 : 1)} ${unit}`
}

function printTable({ figures, correctness }, info) {
  const header = ['figure', 'synced', 'plain', 'ratio', 'target', 'ok']
  const lines = figures.map((f) => [
    f.target === null ? `   ${f.name}` : f.name,
    formatNumber(f.value, f.unit),
    formatNumber(f.baseline, f.unit),
    f.ratio === null ? '-' : `${f.ratio.toFixed(2)}x`,
    f.target === null ? '' : f.ratio === null ? `<= ${f.target} ${f.unit}` : `<= ${f.target}x`,
    f.pass === null ? '' : f.pass ? 'PASS' : 'FAIL',
  ])
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)))
  const format = (cells) =>
    cells.map((c, i) => (i === 0 || i === cells.length - 1 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')
  console.log(`node ${info.node}, ${info.cpus} x ${info.cpuModel}, SQLite ${info.sqlite}`)
  console.log(format(header).trimEnd())
  console.log(widths.map((w) => '-'.repeat(w)).join('-|-'))
  for (const line of lines) console.log(format(line).trimEnd())
  console.log('figure 4 plain = raw bytes of the values; figure 3 plain = the plain insert of figure 1')
  console.log(
    `correctness: ${correctness.pass ? 'PASS' : 'FAIL'} (rows ${correctness.sourceRows} -> ${correctness.importedRows}, ` +
      `checksum ${correctness.checksumsEqual ? 'equal' : 'DIFFERENT'}, same as plain: ${correctness.plainChecksumEqual}, ` +
      `applied ${correctness.applied}, conflicts ${correctness.conflicts})`,
  )
}

function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'converge-bench-'))
  try {
    const result = run(dir)
    const info = machine()
    if (json) console.log(JSON.stringify({ ...result, machine: info }, null, 2))
    else printTable(result, info)
    if (!result.correctness.pass) process.exitCode = 1
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main()
