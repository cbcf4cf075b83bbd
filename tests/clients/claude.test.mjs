// Claude Code (@anthropic-ai/claude-code) as an MCP client of scigate, without
// a model: `claude mcp add` + `claude mcp list` / `claude mcp get`, whose health
// check connects to each server and lists its tools.
//
// It runs with a throwaway HOME and every proxy variable pointing at a closed
// port (127.0.0.1:9) with NO_PROXY=127.0.0.1,localhost: scigate on loopback is
// reached directly, anything else Claude Code might try (updates, telemetry,
// feature flags) fails fast instead of leaving the machine. The documented
// opt-outs are set too.
//
// What Claude Code actually sent is recorded: over HTTP through
// lib/auth-proxy.mjs (record only, it keeps Claude's own Authorization header),
// over stdio through lib/stdio-tap.mjs wrapped around `scigate serve --stdio`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { env, BIN, HERE, run, isolatedEnv, scratchDir, stdioArgs, stripAnsi, readRecords, BAD_KEY } from './lib/harness.mjs';
import { startAuthProxy } from './lib/auth-proxy.mjs';

let home;
let cwd;
let cenv;
let proxy;
let httpRecord;
let stdioRecord;

const claude = (args, timeoutMs = 90000) => run(BIN('claude'), args, { env: cenv, cwd, timeoutMs });

before(async () => {
  home = scratchDir('claude-home');
  cwd = scratchDir('claude-cwd');
  const rec = scratchDir('claude-records');
  httpRecord = path.join(rec, 'http.jsonl');
  stdioRecord = path.join(rec, 'stdio.jsonl');
  cenv = isolatedEnv(home, {
    DISABLE_AUTOUPDATER: '1',
    DISABLE_UPDATES: '1',
    DISABLE_TELEMETRY: '1',
    DISABLE_ERROR_REPORTING: '1',
    DISABLE_GROWTHBOOK: '1',
    DISABLE_INSTALLATION_CHECKS: '1',
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
    CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY: '1',
  });
  proxy = await startAuthProxy({ upstream: new URL(env.url).origin, key: null, record: httpRecord });
  const proxyUrl = `http://127.0.0.1:${proxy.address().port}/mcp`;
  const tap = [process.execPath, path.join(HERE, 'lib', 'stdio-tap.mjs'), stdioRecord, '--'];
  const adds = [
    ['--transport', 'http', 'sg-http', proxyUrl, '--header', `Authorization: Bearer ${env.key}`],
    ['--transport', 'http', 'sg-badkey', env.url, '--header', `Authorization: Bearer ${BAD_KEY}`],
    ['sg-stdio', '--', env.bin, ...stdioArgs()],
    ['sg-stdio-tap', '--', ...tap, env.bin, ...stdioArgs()],
  ];
  for (const a of adds) {
    const r = await claude(['mcp', 'add', '-s', 'user', ...a]);
    assert.equal(r.code, 0, `claude mcp add ${a[0]} ${a[2] ?? ''}: ${r.stdout}${r.stderr}`);
  }
});

after(async () => {
  proxy?.closeAllConnections();
  await new Promise((r) => proxy?.close(r));
});

test('claude --version runs offline', async () => {
  const r = await claude(['--version']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /\d+\.\d+\.\d+ \(Claude Code\)/);
});

test('claude mcp list: scigate connected over HTTP and stdio; a bad key is reported as failed', async () => {
  const r = await claude(['mcp', 'list']);
  const out = stripAnsi(r.stdout + r.stderr);
  const line = (name) => out.split('\n').find((l) => l.startsWith(`${name}:`)) ?? '';
  for (const name of ['sg-http', 'sg-stdio', 'sg-stdio-tap']) {
    assert.match(line(name), /✔ Connected/, `${name} not connected:\n${out}`);
  }
  assert.doesNotMatch(line('sg-badkey'), /✔ Connected/, `a bad key must not connect:\n${out}`);
  assert.match(line('sg-badkey'), /401|Failed|auth/i, `bad-key line:\n${out}`);
});

test('claude mcp get sg-http: connected, with the configured header', async () => {
  const r = await claude(['mcp', 'get', 'sg-http']);
  const out = stripAnsi(r.stdout + r.stderr);
  assert.match(out, /Status: ✔ Connected/, out);
  assert.match(out, /Type: http/, out);
});

test('over HTTP Claude Code discovered the server and listed its tools (recorded)', () => {
  const recs = readRecords(httpRecord);
  const methods = recs.flatMap((x) => x.rpc);
  assert.ok(
    methods.includes('server/discover') || methods.includes('initialize'),
    `no server/discover or initialize seen: ${JSON.stringify(recs)}`,
  );
  const lists = recs.filter((x) => x.rpc.includes('tools/list'));
  assert.ok(lists.length > 0, `Claude Code never sent tools/list: ${JSON.stringify(recs)}`);
  for (const x of recs) assert.ok(x.status === 200 || x.status === 202, `HTTP ${x.status} for ${JSON.stringify(x)}`);
});

test('over stdio Claude Code listed the tools and got an answer (recorded)', () => {
  const recs = readRecords(stdioRecord);
  const req = recs.find((x) => x.dir === 'c2s' && x.method === 'tools/list');
  assert.ok(req, `no tools/list sent over stdio: ${JSON.stringify(recs)}`);
  const res = recs.find((x) => x.dir === 's2c' && x.id === req.id && x.method === null);
  assert.ok(res?.result, `tools/list (id ${req.id}) got no result: ${JSON.stringify(res)}`);
  assert.ok(!recs.some((x) => x.unparsable), `non-JSON on the stdio channel: ${JSON.stringify(recs.filter((x) => x.unparsable))}`);
});
