/** node:zlib and node:crypto as the payload codec: native, several times faster than pure JS. */
import { createHash } from 'node:crypto'
import { constants, deflateRawSync, inflateRawSync } from 'node:zlib'
import type { PayloadCodec } from '../wire/payload.js'

export const nodeCodec: PayloadCodec = {
  deflate: (raw, effort = 'fast') =>
    deflateRawSync(raw, effort === 'fast' ? { level: 1, strategy: constants.Z_HUFFMAN_ONLY } : { level: 1 }),
  // maxOutputLength makes zlib stop (and throw) one byte past what the chunk announced.
  inflate: (data, rawLen) => inflateRawSync(data, { maxOutputLength: rawLen + 1 }),
  sha256: (...parts) => {
    const h = createHash('sha256')
    for (const part of parts) h.update(part)
    return h.digest()
  },
}
