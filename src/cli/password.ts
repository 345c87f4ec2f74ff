/** Bundle passwords: the first line of a password file, or typed on the terminal without echo. */
import { readFileSync } from 'node:fs'
import { CliError } from './output.js'

const ENTER = new Set(['\r', '\n'])
const CTRL_C = '\u0003'
const CTRL_D = '\u0004'
const BACKSPACE = new Set(['\u007f', '\b'])

/** The first line of `file`; an empty line is refused. */
export function readPasswordFile(file: string): string {
  const password = readFileSync(file, 'utf8').split(/\r?\n/, 1)[0] ?? ''
  if (password === '')
    throw new CliError('BAD_ARGUMENT', `the first line of ${file} is empty; it must hold the password`)
  return password
}

/**
 * Asks for a password on the terminal without echo; with `confirm`, asks twice (for
 * encrypting, where a typo would lock the bundle). Fails with usage status 2 when stdin is
 * not a terminal; `reason` says why a password is needed.
 */
export async function askPassword(reason: string, confirm: boolean): Promise<string> {
  if (!process.stdin.isTTY) {
    throw new CliError(
      'NO_TERMINAL',
      `a password is needed (${reason}) and stdin is not a terminal to ask for it; pass --password-file FILE`,
      2,
    )
  }
  const password = await readHidden('Password: ')
  if (password === '') throw new CliError('BAD_ARGUMENT', 'the password is empty')
  if (confirm && (await readHidden('Repeat password: ')) !== password) {
    throw new CliError('BAD_ARGUMENT', 'the passwords do not match')
  }
  return password
}

/** Reads one line from the terminal in raw mode, echoing nothing. */
function readHidden(prompt: string): Promise<string> {
  const stdin = process.stdin
  // Raw mode before the prompt, so nothing typed after the prompt appears can be echoed.
  stdin.setRawMode(true)
  stdin.setEncoding('utf8')
  stdin.resume()
  process.stderr.write(prompt)
  return new Promise<string>((resolve, reject) => {
    let typed: string[] = []
    const finish = (error?: CliError) => {
      stdin.removeListener('data', onData)
      stdin.setRawMode(false)
      stdin.pause()
      process.stderr.write('\n')
      if (error) reject(error)
      else resolve(typed.join(''))
    }
    const onData = (chunk: string) => {
      for (const ch of chunk) {
        if (ENTER.has(ch) || ch === CTRL_D) return finish()
        if (ch === CTRL_C) return finish(new CliError('CANCELLED', 'password entry cancelled'))
        if (BACKSPACE.has(ch)) typed = typed.slice(0, -1)
        else typed.push(ch)
      }
    }
    stdin.on('data', onData)
  })
}
