/** node:fs as the replica's file access for bundles; writes are flushed to disk before returning. */
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs'
import type { ReplicaFiles } from '../replica/bundles.js'

export const nodeFiles: ReplicaFiles = {
  readFile: (path) => readFileSync(path),
  writeFile: (path, parts) => {
    const fd = openSync(path, 'w')
    try {
      for (const data of parts) {
        let done = 0
        while (done < data.length) done += writeSync(fd, data, done, data.length - done)
      }
      fsyncSync(fd)
    } finally {
      closeSync(fd)
    }
  },
  rename: (from, to) => renameSync(from, to),
}
