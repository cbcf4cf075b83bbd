// OpenCode (opencode-ai) as an MCP client of scigate, without a model:
// `opencode mcp list` connects to every configured MCP server (it lists their
// tools to do so) and prints each one's status.
//
// Same isolation as the Claude Code suite: throwaway HOME and XDG dirs, every
// proxy variable pointing at a closed port with NO_PROXY for loopback, and
// OpenCode's own opt-outs (models.dev fetch, autoupdate, LSP downloads,
// sharing, default plugins; --pure = no external plugins). Traffic is recorded
// through lib/auth-proxy.mjs (HTTP) and lib/stdio-tap.mjs (stdio).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { env, BIN, HERE, run, isolatedEnv, scratchDir, stdioArgs, stripAnsi, readRecords, BAD_KEY } from './lib/harness.mjs';
import { startAuthProxy } from './lib/auth-proxy.mjs';

let cwd;
let oenv;
let proxy;
let httpRecord;
let stdioRecord;

const opencode = (args, timeoutMs = 90000) => run(BIN('opencode'), args, { env: oenv, cwd, timeoutMs });

before(async () => {
  const home = scratchDir('opencode-home');
  cwd = scratchDir('opencode-cwd');
  const rec = scratchDir('opencode-records');
  httpRecord = path.join(rec, 'http.jsonl');
  stdioRecord = path.join(rec, 'stdio.jsonl');
  proxy = await startAuthProxy({ upstream: new URL(env.url).origin, key: null, record: httpRecord });
  const proxyUrl = `http://127.0.0.1:${proxy.address().port}/mcp`;
  const config = {
    $schema: 'https://opencode.ai/config.json',
    autoupdate: false,
    share: 'disabled',
    mcp: {
      'sg-http': { type: 'remote', url: proxyUrl, headers: { Authorization: `Bearer ${env.key}` }, oauth: false, enabled: true },
      'sg-badkey': { type: 'remote', url: env.url, headers: { Authorization: `Bearer ${BAD_KEY}` }, oauth: false, enabled: true },
      'sg-stdio': { type: 'local', command: [env.bin, ...stdioArgs()], enabled: true },
      'sg-stdio-tap': {
        type: 'local',
        command: [process.execPath, path.join(HERE, 'lib', 'stdio-tap.mjs'), stdioRecord, '--', env.bin, ...stdioArgs()],
        enabled: true,
      },
    },
  };
  const configFile = path.join(cwd, 'opencode.json');
  fs.writeFileSync(configFile, JSON.stringify(config, null, 2));
  oenv = isolatedEnv(home, {
    OPENCODE_CONFIG: configFile,
    OPENCODE_DISABLE_AUTOUPDATE: '1',
    OPENCODE_DISABLE_MODELS_FETCH: '1',
    OPENCODE_DISABLE_LSP_DOWNLOAD: '1',
    OPENCODE_DISABLE_SHARE: '1',
    OPENCODE_DISABLE_DEFAULT_PLUGINS: '1',
    OPENCODE_DISABLE_CLAUDE_CODE: '1',
    NO_COLOR: '1',
  });
});

after(async () => {
  proxy?.closeAllConnections();
  await new Promise((r) => proxy?.close(r));
});

test('opencode --version runs offline', async () => {
  const r = await opencode(['--version']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout.trim(), /^\d+\.\d+\.\d+/);
});

test('opencode mcp list: scigate connected over HTTP and stdio; a bad key is reported as failed', async () => {
  const r = await opencode(['mcp', 'list', '--pure']);
  const out = stripAnsi(r.stdout + r.stderr);
  assert.equal(r.code, 0, out);
  // Each server is "✓ NAME connected" or "✗ NAME failed" followed by details.
  const status = (name) => new RegExp(`[✓✗]\\s+${name}\\s+(\\w+)`).exec(out)?.[1];
  for (const name of ['sg-http', 'sg-stdio', 'sg-stdio-tap']) {
    assert.equal(status(name), 'connected', `${name}:\n${out}`);
  }
  assert.notEqual(status('sg-badkey'), 'connected', `a bad key must not connect:\n${out}`);
  assert.match(out, /401/, `the bad-key failure should say 401:\n${out}`);
});

test('over HTTP OpenCode initialised a session and listed the tools (recorded)', () => {
  const recs = readRecords(httpRecord);
  const methods = recs.flatMap((x) => x.rpc);
  assert.ok(methods.includes('initialize') || methods.includes('server/discover'), `no handshake seen: ${JSON.stringify(recs)}`);
  const lists = recs.filter((x) => x.rpc.includes('tools/list'));
  assert.ok(lists.length > 0, `OpenCode never sent tools/list: ${JSON.stringify(recs)}`);
  for (const x of lists) assert.equal(x.status, 200, JSON.stringify(x));
  for (const x of recs) assert.ok([200, 202].includes(x.status), `HTTP ${x.status} for ${JSON.stringify(x)}`);
});

test('over stdio OpenCode listed the tools and got an answer (recorded)', () => {
  const recs = readRecords(stdioRecord);
  const req = recs.find((x) => x.dir === 'c2s' && x.method === 'tools/list');
  assert.ok(req, `no tools/list sent over stdio: ${JSON.stringify(recs)}`);
  const res = recs.find((x) => x.dir === 's2c' && x.id === req.id && x.method === null);
  assert.ok(res?.result, `tools/list (id ${req.id}) got no result: ${JSON.stringify(res)}`);
  assert.ok(!recs.some((x) => x.unparsable), `non-JSON on the stdio channel: ${JSON.stringify(recs.filter((x) => x.unparsable))}`);
});
