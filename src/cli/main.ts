#!/usr/bin/env node
/** Entry point of the `converge` command: runs the program and maps failures to exit statuses. */
import { buildProgram } from './commands.js'
import { reportError } from './output.js'

try {
  await buildProgram().parseAsync(process.argv)
} catch (err) {
  process.exitCode = reportError(err)
}
