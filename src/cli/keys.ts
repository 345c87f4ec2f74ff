/** Ed25519 key files: `<name>.key` (private, mode 0600) and `<name>.pub`, each one line of hex. */
import { readFileSync, writeFileSync } from 'node:fs'
import { ed25519 } from '@noble/curves/ed25519.js'
import { CliError } from './output.js'

const KEY_HEX = /^[0-9a-f]{64}$/

/** Writes a new key pair; refuses to overwrite either file. Returns the two paths. */
export function writeKeyPair(name: string): { privateFile: string; publicFile: string } {
  const { secretKey, publicKey } = ed25519.keygen()
  const privateFile = `${name}.key`
  const publicFile = `${name}.pub`
  // 'wx' fails with EEXIST instead of replacing a key someone may depend on.
  writeFileSync(privateFile, `${toHex(secretKey)}\n`, { mode: 0o600, flag: 'wx' })
  writeFileSync(publicFile, `${toHex(publicKey)}\n`, { flag: 'wx' })
  return { privateFile, publicFile }
}

/** The private key in a `.key` file written by `converge keygen`. */
export function readPrivateKey(file: string): Uint8Array {
  return readKey(file, 'private')
}

/** The public key in a `.pub` file written by `converge keygen`. */
export function readPublicKey(file: string): Uint8Array {
  return readKey(file, 'public')
}

function readKey(file: string, kind: 'private' | 'public'): Uint8Array {
  const text = readFileSync(file, 'utf8').trim().toLowerCase()
  if (!KEY_HEX.test(text)) {
    throw new CliError('BAD_KEY', `${file} is not an Ed25519 ${kind} key (one line of 64 hex characters)`)
  }
  return Uint8Array.from(Buffer.from(text, 'hex'))
}

function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('hex')
}
