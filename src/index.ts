/** sqlite-converge: local-first sync for ordinary SQLite tables. */

import { WebSocket } from 'ws'
import { openBetterSqlite3 } from './driver/better-sqlite3.js'
import type { SqliteDatabase } from './driver/types.js'
import { nodeCodec } from './platform/node-codec.js'
import { nodeFiles } from './platform/node-files.js'
import { Replica, type ReplicaOptions } from './replica/replica.js'
import { httpSync } from './sync/http-sync.js'
import { liveTransport, type WebSocketLike } from './sync/ws-session.js'

export type { ColumnAlgorithm, RowMode } from './core/algorithms.js'
export { ConvergeError, type ConvergeErrorCode, isConvergeError } from './core/errors.js'
export type { AppValue } from './core/values.js'
export type { VersionVector } from './core/version-vector.js'
export type { RunResult, SqliteDatabase, SqliteStatement } from './driver/types.js'
export type {
  BundleExportOptions,
  BundleExportResult,
  BundleImportOptions,
  BundleImportResult,
  BundlePasswordEncryption,
  BundleProgressCallback,
  KeyInput,
  Peer,
  ReplicaFiles,
} from './replica/bundles.js'
export {
  type CompactResult,
  type Conflict,
  type ImportResult,
  type LiveChange,
  type LiveEvents,
  type LiveOptions,
  type LiveSession,
  type LiveStatus,
  type ProgressCallback,
  Replica,
  type ReplicaOptions,
  type SyncHost,
  type SyncOptions,
  type SyncResult,
  type SyncTransport,
} from './replica/replica.js'
export type { ColumnSpec, TableOptions } from './replica/schema.js'
export {
  ACK_PROTOCOL,
  browserWebSocket,
  liveTransport,
  type WebSocketFactory,
  type WebSocketLike,
} from './sync/ws-session.js'
export type { ScryptParams } from './wire/bundle.js'
export type { PayloadCodec } from './wire/payload.js'

/**
 * Opens (or creates) a replica: a database file path, or an open connection of the
 * better-sqlite3 shape ({@link SqliteDatabase}).
 */
export function openReplica(database: string | SqliteDatabase, options: ReplicaOptions = {}): Replica {
  const db = typeof database === 'string' ? openBetterSqlite3(database) : database
  try {
    return new Replica(db, { codec: nodeCodec, files: nodeFiles, sync: httpSync, live: nodeLive, ...options })
  } catch (err) {
    if (typeof database === 'string') db.close()
    throw err
  }
}

/** Live sync in Node: the `ws` client, which can send the token as an `Authorization` header. */
const nodeLive = liveTransport(
  (url, token, protocols) =>
    // ws's handler types name its own event classes; the shapes the session reads match.
    new WebSocket(url, protocols ? [...protocols] : [], {
      headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
      maxPayload: 1024 * 1024 * 1024,
    }) as unknown as WebSocketLike,
)
