// A pino logger for tests that keeps every line it writes, parsed.
import { Writable } from 'node:stream'
import pino from 'pino'

/** A logger at debug level whose lines land in `lines`. */
export function capture(): { logger: ReturnType<typeof pino>; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = []
  const stream = new Writable({
    write(chunk, _enc, done) {
      for (const l of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(l))
      done()
    },
  })
  return { logger: pino({ level: 'debug' }, stream), lines }
}
