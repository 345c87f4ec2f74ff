/** Version vectors: what a replica has seen, as the highest HLC per origin site. */

/** `{ [siteId]: highest HLC seen from that site }`; a missing site means nothing seen. */
export type VersionVector = Record<string, number>

/** True when the change `(site, hlc)` is already covered by `vector`. */
export function covers(vector: VersionVector, site: string, hlc: number): boolean {
  const seen = vector[site]
  return seen !== undefined && hlc <= seen
}

/** True when `a` has seen at least everything `b` has (pointwise `a >= b`). */
export function dominates(a: VersionVector, b: VersionVector): boolean {
  for (const [site, hlc] of Object.entries(b)) {
    if (hlc > 0 && !covers(a, site, hlc)) return false
  }
  return true
}

/** Pointwise maximum of two vectors (a new object). */
export function mergeVectors(a: VersionVector, b: VersionVector): VersionVector {
  const out: VersionVector = { ...a }
  mergeInto(out, b)
  return out
}

/** Raises `into` to the pointwise maximum of both, in place; true if any entry rose. */
export function mergeInto(into: VersionVector, other: VersionVector): boolean {
  let raised = false
  for (const site in other) {
    const hlc = other[site] as number
    const seen = into[site]
    if (seen === undefined || hlc > seen) {
      into[site] = hlc
      raised = true
    }
  }
  return raised
}
