// The package as users get it: exports, types, and the layering rules of docs/design.md.
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

const root = join(import.meta.dirname, '..')

function sources(folder: string): { file: string; text: string }[] {
  const dir = join(root, 'src', folder)
  return readdirSync(dir, { recursive: true })
    .map(String)
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts'))
    .map((f) => ({ file: `${folder}/${f}`, text: readFileSync(join(dir, f), 'utf8') }))
}

function imports(text: string): string[] {
  return [...text.matchAll(/^\s*(?:import|export)\b[^'"]*from\s+'([^']+)'/gm)].map((m) => m[1] as string)
}

describe('package', () => {
  it('resolves by its name and exposes the public API', async () => {
    const mod = await import('sqlite-converge')
    expect(typeof mod.openReplica).toBe('function')
    expect(typeof mod.ConvergeError).toBe('function')
    expect(typeof mod.isConvergeError).toBe('function')
    expect(typeof mod.Replica).toBe('function')
  })

  it('ships type declarations for the entry point', () => {
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
    expect(pkg.name).toBe('sqlite-converge')
    expect(pkg.type).toBe('module')
    const types = pkg.exports['.'].types as string
    expect(existsSync(join(root, types))).toBe(true)
    expect(readFileSync(join(root, types), 'utf8')).toMatch(/openReplica/)
  })
})

describe('layers', () => {
  const allowed: Record<string, string[]> = {
    core: ['core'],
    wire: ['core', 'wire'],
    replica: ['core', 'wire', 'driver', 'replica'],
    sync: ['core', 'wire', 'replica', 'sync'],
  }
  for (const [folder, may] of Object.entries(allowed)) {
    it(`src/${folder} imports no node: module, no native driver, and only ${may.join(', ')}`, () => {
      for (const { file, text } of sources(folder)) {
        for (const spec of imports(text)) {
          expect(spec.startsWith('node:'), `${file} imports ${spec}`).toBe(false)
          expect(spec, `${file} imports ${spec}`).not.toBe('better-sqlite3')
          if (spec.startsWith('.')) {
            const target = join(folder, spec).split('/')[0] as string
            expect(may, `${file} imports ${spec}`).toContain(target)
          }
        }
      }
    })
  }
  it('only the command line depends on src/cli, and nothing below the server on src/server', () => {
    for (const folder of ['core', 'wire', 'driver', 'replica', 'sync', 'platform', 'server']) {
      for (const { file, text } of sources(folder)) {
        for (const spec of imports(text)) {
          expect(spec.includes('/cli/'), `${file} imports ${spec}`).toBe(false)
          if (folder !== 'server') expect(spec.includes('/server/'), `${file} imports ${spec}`).toBe(false)
        }
      }
    }
  })

  it('src/replica depends on the driver only through its types', () => {
    for (const { file, text } of sources('replica')) {
      for (const line of text.split('\n').filter((l) => l.includes("from '../driver/"))) {
        expect(line, file).toMatch(/^import type /)
      }
    }
  })
})
