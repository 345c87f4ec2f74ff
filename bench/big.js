/**
 * The 1M-row memory runs, one phase per process: `build <file> <rows>`, `sync <source> <target>`
 * (payload in memory) or `bundle <source> <target> <file>` (signed bundle file); prints JSON.
 */
import { openReplica } from 'sqlite-converge'
import { generateRows, insertRows, openSynced } from './workload.js'

const BATCH = 50_000

/** Peak resident set size of this process so far, in MB. */
function peakRssMb() {
  return process.resourceUsage().maxRSS / 1024
}

/** Builds a synced database of `rows` rows, inserted in transactions of {@link BATCH} rows. */
function build(file, rows) {
  const replica = openSynced(file)
  let insertMs = 0
  for (let first = 0; first < rows; first += BATCH) {
    insertMs += insertRows(replica.db, generateRows(Math.min(BATCH, rows - first), first))
  }
  const start = performance.now()
  replica.close()
  return { insertMs, closeMs: performance.now() - start }
}

/** Exports everything from `sourceFile` and imports it into a fresh replica at `targetFile`. */
function sync(sourceFile, targetFile) {
  const source = openReplica(sourceFile)
  let start = performance.now()
  const payload = source.exportChanges()
  const exportMs = performance.now() - start
  const exportRssMb = peakRssMb()
  const target = openSynced(targetFile)
  start = performance.now()
  target.importChanges(payload)
  const importMs = performance.now() - start
  const targetRows = target.db.prepare('SELECT count(*) AS n FROM todos').get().n
  source.close()
  target.close()
  return { exportMs, importMs, exportRssMb, maxRssMb: peakRssMb(), payloadBytes: payload.length, targetRows }
}

/** Exports everything from `sourceFile` as a signed bundle file and imports it into a fresh replica. */
function bundle(sourceFile, targetFile, bundleFile) {
  const privateKey = crypto.getRandomValues(new Uint8Array(32))
  const source = openReplica(sourceFile)
  let start = performance.now()
  const { bytes } = source.exportBundle(bundleFile, { sign: { privateKey } })
  const exportMs = performance.now() - start
  const exportRssMb = peakRssMb()
  source.close()
  globalThis.gc?.() // the export's buffers are garbage now; the import should not stand on them
  const target = openSynced(targetFile)
  start = performance.now()
  target.importBundle(bundleFile)
  const importMs = performance.now() - start
  const targetRows = target.db.prepare('SELECT count(*) AS n FROM todos').get().n
  target.close()
  return { exportMs, importMs, exportRssMb, maxRssMb: peakRssMb(), bundleBytes: bytes, targetRows }
}

const [phase, a, b, c] = process.argv.slice(2)
if (phase === 'build') console.log(JSON.stringify(build(a, Number(b))))
else if (phase === 'sync') console.log(JSON.stringify(sync(a, b)))
else if (phase === 'bundle') console.log(JSON.stringify(bundle(a, b, c)))
else
  throw new Error(
    'usage: node bench/big.js build <file> <rows> | sync <source> <target> | bundle <source> <target> <file>',
  )
