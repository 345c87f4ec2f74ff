/**
 * Hybrid logical clock packed in one safe integer: wall-clock milliseconds times
 * {@link HLC_TICKS_PER_MS} plus a counter. Comparing two HLCs is comparing two numbers,
 * and every value fits a double exactly until the year 2248.
 */

/** Counter slots per millisecond; a burst longer than this borrows from the next ms. */
export const HLC_TICKS_PER_MS = 1024

/** The HLC of a wall-clock time with a zero counter. */
export function hlcFromMillis(ms: number): number {
  return Math.floor(ms) * HLC_TICKS_PER_MS
}

/** Wall-clock milliseconds of an HLC. */
export function hlcToMillis(hlc: number): number {
  return Math.floor(hlc / HLC_TICKS_PER_MS)
}

/** The next local timestamp: strictly after `last`, and not before the wall clock. */
export function nextHlc(last: number, wallMs: number): number {
  return Math.max(last + 1, hlcFromMillis(wallMs))
}

/** True when `remote` is further ahead of the local wall clock than `maxDriftMs`. */
export function exceedsDrift(remote: number, wallMs: number, maxDriftMs: number): boolean {
  return hlcToMillis(remote) > wallMs + maxDriftMs
}
