// The official MCP conformance suite (@modelcontextprotocol/conformance, server
// mode) against scigate's Streamable HTTP endpoint, once per protocol revision
// it defines requirement sets for: 2025-11-25 (stateful: initialize + sessions)
// and 2026-07-28 (stateless). `--requirements REV` runs exactly the scenarios
// that revision requires, at that revision's wire version.
//
// The conformance runner cannot send an Authorization header, so it talks to
// lib/auth-proxy.mjs, which adds the demo key and passes everything else
// (Host, Origin, bodies, SSE streams, disconnects) through unchanged.
//
// conformance-baseline.json lists the checks expected to fail because they do
// not apply to scigate (no resources/prompts/completions/logging, no tasks
// extension, or the check needs a diagnostic tool that only the suite's own
// reference server has), one reason each. Any other failing check fails this
// test (FAILURE, and also WARNING = a failed SHOULD, as the runner's own
// baseline logic counts it), and so does an entry that no longer fails (stale).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { env, BIN, HERE, run, scratchDir } from './lib/harness.mjs';
import { startAuthProxy } from './lib/auth-proxy.mjs';

const REVISIONS = ['2025-11-25', '2026-07-28'];
const BASELINE_FILE = path.join(HERE, 'conformance-baseline.json');
const baseline = JSON.parse(fs.readFileSync(BASELINE_FILE, 'utf8'));

let proxy;
let proxyUrl;
before(async () => {
  proxy = await startAuthProxy({ upstream: new URL(env.url).origin, key: env.key });
  proxyUrl = `http://127.0.0.1:${proxy.address().port}/mcp`;
});
after(async () => {
  proxy?.closeAllConnections();
  await new Promise((r) => proxy?.close(r));
});

test('the baseline lists only not-applicable checks, each with a reason', () => {
  for (const rev of REVISIONS) {
    const entries = baseline[rev];
    assert.ok(entries && typeof entries === 'object', `baseline has no section for ${rev}`);
    for (const [key, reason] of Object.entries(entries)) {
      assert.match(key, /^[a-z0-9-]+:[a-z0-9-]+$/, `baseline entry "${key}" must be scenario:check-id`);
      assert.equal(typeof reason, 'string', `${rev} ${key}: reason`);
      assert.ok(reason.length >= 20, `${rev} ${key}: give a real reason`);
    }
  }
});

/** checks.json of every scenario the runner wrote under dir. */
function collectResults(dir) {
  const out = [];
  for (const name of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
    const m = /^server-(.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$/.exec(name);
    const file = path.join(dir, name, 'checks.json');
    if (!m || !fs.existsSync(file)) continue;
    out.push({ scenario: m[1], checks: JSON.parse(fs.readFileSync(file, 'utf8')) });
  }
  return out;
}

for (const rev of REVISIONS) {
  test(`conformance server --requirements ${rev}`, { timeout: 240000 }, async (t) => {
    const work = scratchDir(`conformance-${rev}`);
    const expected = Object.keys(baseline[rev]);
    const yamlFile = path.join(work, 'expected-failures.yml');
    fs.writeFileSync(yamlFile, `server:\n${expected.map((e) => `  - ${JSON.stringify(e)}\n`).join('')}`);
    const resultsDir = path.join(work, 'results');

    const r = await run(
      env.node22,
      [BIN('conformance'), 'server', '--url', proxyUrl, '--requirements', rev, '--expected-failures', yamlFile, '-o', resultsDir],
      { cwd: work, timeoutMs: 220000 },
    );
    fs.writeFileSync(path.join(work, 'runner-output.txt'), `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);

    const results = collectResults(resultsDir);
    const scenarios = new Set(results.map((x) => x.scenario));
    // Guard against a run that silently tested nothing.
    for (const must of rev === '2025-11-25' ? ['server-initialize', 'tools-list', 'ping'] : ['server-stateless', 'tools-list', 'http-header-validation']) {
      assert.ok(scenarios.has(must), `scenario ${must} did not run (${r.stdout.slice(-2000)}${r.stderr.slice(-2000)})`);
    }

    // Like the runner's own baseline logic, a WARNING (failed SHOULD) counts
    // as a failure unless the baseline excuses it.
    const failing = new Map(); // scenario:check -> [check...]
    for (const { scenario, checks } of results) {
      for (const c of checks) {
        const key = `${scenario}:${c.id}`;
        if (c.status === 'FAILURE' || c.status === 'WARNING') failing.set(key, [...(failing.get(key) ?? []), c]);
      }
    }
    for (const [key, cs] of failing) {
      if (key in baseline[rev]) t.diagnostic(`not applicable (baseline): ${key} [${cs[0].status}]`);
    }

    const unexpected = [...failing.entries()].filter(([key]) => !(key in baseline[rev]));
    const stale = expected.filter((key) => scenarios.has(key.split(':')[0]) && !failing.has(key));
    const report = [
      ...unexpected.map(([key, cs]) => {
        const c = cs[0];
        const details = c.details ? `\n      details: ${JSON.stringify(c.details).slice(0, 1500)}` : '';
        return `  ${c.status} ${key}\n      ${c.description ?? ''}\n      ${c.errorMessage ?? ''}${details}`;
      }),
      ...stale.map((key) => `  STALE baseline entry ${key}: it passes now, remove it from conformance-baseline.json`),
    ].join('\n');
    fs.writeFileSync(path.join(work, 'report.txt'), report || 'clean\n');
    assert.equal(report, '', `conformance ${rev}: unexpected results (${results.length} scenarios run; full results in ${resultsDir}):\n${report}`);
    // The runner applies the same baseline itself; it must agree.
    assert.equal(r.code, 0, `the conformance runner exited ${r.code}:\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-2000)}`);
  });
}
