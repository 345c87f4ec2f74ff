/** The HTML status page at `/`: databases, live clients and recent sync activity, every value escaped. */
import type { SyncActivity } from './metrics.js'

export function escapeHtml(s: string): string {
  return s
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;')
}

export function statusPage(
  databases: readonly { name: string; tables: readonly string[] }[],
  recent: readonly SyncActivity[],
  version: string,
  connected: ReadonlyMap<string, number> = new Map(),
): string {
  const e = escapeHtml
  const dbRows = databases
    .map(
      (d) =>
        `<li><b>${e(d.name)}</b>: ${d.tables.length ? d.tables.map(e).join(', ') : 'no tables yet'}; ` +
        `${connected.get(d.name) ?? 0} live clients</li>`,
    )
    .join('\n')
  const activity = [...recent]
    .reverse()
    .map(
      (a) =>
        `<tr><td>${e(new Date(a.time).toISOString())}</td><td>${e(a.db)}</td><td><code>${e(a.client)}</code></td>` +
        `<td>${a.changesIn}</td><td>${a.changesOut}</td><td>${a.ms.toFixed(1)}</td></tr>`,
    )
    .join('\n')
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>converge sync server</title>
<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}</style>
</head><body>
<h1>converge sync server</h1>
<p>sqlite-converge ${e(version)}. <a href="/health">health</a> · <a href="/metrics">metrics</a></p>
<h2>Databases (${databases.length})</h2>
<ul>
${dbRows || '<li>none yet</li>'}
</ul>
<h2>Recent syncs</h2>
<table><thead><tr><th>time</th><th>database</th><th>client site</th><th>changes in</th><th>changes out</th><th>ms</th></tr></thead>
<tbody>
${activity || '<tr><td colspan="6">none yet</td></tr>'}
</tbody></table>
</body></html>
`
}
