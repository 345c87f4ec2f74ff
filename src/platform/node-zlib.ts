/** node:zlib as the payload's deflate codec: native, several times faster than pure JS. */
import { constants, deflateRawSync, inflateRawSync } from 'node:zlib'
import type { DeflateCodec } from '../wire/payload.js'

export const nodeZlibCodec: DeflateCodec = {
  deflate: (raw) => deflateRawSync(raw, { level: 1, strategy: constants.Z_DEFAULT_STRATEGY }),
  // maxOutputLength makes zlib stop (and throw) one byte past what the chunk announced.
  inflate: (data, rawLen) => inflateRawSync(data, { maxOutputLength: rawLen + 1 }),
}
