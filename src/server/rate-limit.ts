/** A sliding-window rate limiter: at most `limit` requests per key in any `windowMs`. */
import { getOrCreate } from '../core/maps.js'

export class RateLimiter {
  readonly #limit: number
  readonly #windowMs: number
  readonly #hits = new Map<string, number[]>()
  #checks = 0

  constructor(limit: number, windowMs = 60_000) {
    this.#limit = limit
    this.#windowMs = windowMs
  }

  /** Records a request; false when the key is over its limit (the request is not counted). */
  allow(key: string, now = Date.now()): boolean {
    if (++this.#checks % 1024 === 0) this.#sweep(now)
    const since = now - this.#windowMs
    const hits = getOrCreate(this.#hits, key, (): number[] => [])
    let drop = 0
    while (drop < hits.length && (hits[drop] as number) <= since) drop++
    if (drop) hits.splice(0, drop)
    if (hits.length >= this.#limit) return false
    hits.push(now)
    return true
  }

  #sweep(now: number): void {
    for (const [key, hits] of this.#hits) {
      if (hits.length === 0 || (hits[hits.length - 1] as number) <= now - this.#windowMs) this.#hits.delete(key)
    }
  }
}
