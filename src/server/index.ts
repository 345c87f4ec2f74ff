/** sqlite-converge/server: the sync server (HTTP) over a pluggable store. */
export type { DatabaseConfig, ServerConfig } from './config.js'
export { type ConvergeServer, createServer, isLoopback, type ServerOptions } from './http.js'
export { SqliteStore, type SqliteStoreOptions } from './sqlite-store.js'
export type { AppliedPayload, ExportedPayload, StoreDatabase, SyncStore } from './store.js'
