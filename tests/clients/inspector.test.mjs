// The MCP Inspector's CLI mode (@modelcontextprotocol/inspector --cli) against
// scigate: list tools and call tools, over stdio and Streamable HTTP, in both
// protocol eras (--protocol-era legacy|modern).
//
// Why this package and not @modelcontextprotocol/inspector-cli: the standalone
// inspector-cli 1.0.3 is the deprecated v1 line and does not run as installed
// (it resolves its own package.json relative to the working directory and
// fails with "Cannot find module .../@modelcontextprotocol/package.json").
// The v2 Inspector runs offline, has a scriptable CLI (--format json) and can
// choose the protocol era. It needs node >= 22.19, hence SCIGATE_NODE22.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { env, BIN, run, isolatedEnv, scratchDir, stdioArgs, BAD_KEY } from './lib/harness.mjs';

const home = () => scratchDir('inspector-home');

/** Runs `mcp-inspector --cli ...`; returns {code, stdout, stderr, json}. */
async function inspector(args, { timeoutMs = 60000 } = {}) {
  const r = await run(env.node22, [BIN('mcp-inspector'), '--cli', ...args], {
    env: isolatedEnv(home(), { MCP_AUTO_OPEN_ENABLED: 'false' }),
    timeoutMs,
  });
  let json;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    /* not JSON */
  }
  return { ...r, json };
}

const targets = {
  http: (key = env.key) => [env.url, '--transport', 'http', '--header', `Authorization: Bearer ${key}`],
  stdio: () => ['--transport', 'stdio', '--', env.bin, ...stdioArgs()],
};
// Options must precede the `--` that starts a stdio server's command line.
const argv = (kind, opts) => (kind === 'stdio' ? [...opts, ...targets.stdio()] : [...targets.http(), ...opts]);

const eras = { legacy: '2025-11-25', modern: '2026-07-28' };

for (const kind of ['http', 'stdio']) {
  for (const [era, version] of Object.entries(eras)) {
    describe(`inspector --cli over ${kind}, --protocol-era ${era}`, () => {
      const common = ['--format', 'json', '--protocol-era', era];

      test('tools/list shows the demo tools with their schemas and annotations', async () => {
        const r = await inspector(argv(kind, [...common, '--method', 'tools/list']));
        assert.equal(r.code, 0, `exit ${r.code}\n${r.stderr}\n${r.stdout}`);
        const tools = r.json?.result?.tools;
        assert.ok(Array.isArray(tools), `no result.tools in: ${r.stdout.slice(0, 500)}`);
        // The demo policy's tools: introspection, the demo tools, jobs, data staging, the
        // simulator and the model registry. call_inference and embed are not offered: this
        // server has no inference backend configured.
        assert.deepEqual(tools.map((t) => t.name).sort(), [
          'cancel_job', 'cancel_transfer', 'echo', 'get_job', 'get_model', 'get_transfer', 'get_usage',
          'list_files', 'list_jobs', 'list_transfers', 'query_model_registry', 'read_file', 'read_job_output',
          'run_quantum_circuit', 'sleep', 'stage_data', 'stat_file', 'submit_job', 'wait_job', 'whoami',
        ]);
        // Submitting a job and staging data change things; cancelling destroys work and staging
        // may overwrite a file.
        const writes = {
          submit_job: { destructive: false },
          cancel_job: { destructive: true },
          stage_data: { destructive: true },
          cancel_transfer: { destructive: true },
        };
        for (const t of tools) {
          assert.equal(t.inputSchema?.type, 'object', t.name);
          assert.equal(t.outputSchema?.type, 'object', t.name);
          assert.equal(t.annotations?.readOnlyHint, !writes[t.name], t.name);
          if (writes[t.name]) assert.equal(t.annotations?.destructiveHint, writes[t.name].destructive, t.name);
        }
      });

      test('tools/call whoami reports the caller and this era', async () => {
        const r = await inspector(argv(kind, [...common, '--method', 'tools/call', '--tool-name', 'whoami']));
        assert.equal(r.code, 0, `exit ${r.code}\n${r.stderr}\n${r.stdout}`);
        const sc = r.json?.result?.structuredContent;
        assert.ok(sc, `no structuredContent in: ${r.stdout.slice(0, 500)}`);
        assert.equal(sc.principal, 'demo');
        assert.equal(sc.auth_method, kind === 'http' ? 'api_key' : 'stdio');
        assert.equal(sc.protocol.era, version);
        assert.equal(sc.protocol.version, version);
      });

      test('tools/call echo with --tool-arg returns the text', async () => {
        const r = await inspector(argv(kind, [...common, '--method', 'tools/call', '--tool-name', 'echo', '--tool-arg', 'text=hello inspector']));
        assert.equal(r.code, 0, `exit ${r.code}\n${r.stderr}\n${r.stdout}`);
        assert.deepEqual(r.json?.result?.structuredContent, { text: 'hello inspector' });
        assert.equal(r.json.result.isError, false);
      });
    });
  }
}

describe('inspector --cli over http: errors and schema portability', () => {
  test('invalid arguments come back as an isError result (exit 5) with the reason', async () => {
    const r = await inspector(argv('http', ['--format', 'json', '--method', 'tools/call', '--tool-name', 'echo', '--tool-args-json', '{"text":42}']));
    assert.equal(r.code, 5, `inspector exits 5 for isError results; got ${r.code}\n${r.stderr}\n${r.stdout}`);
    assert.equal(r.json?.result?.isError, true);
    assert.match(r.json.result.content[0].text, /text/);
    assert.match(r.stderr, /tool_is_error/);
  });

  test('an unknown tool is an error (non-zero exit naming the tool)', async () => {
    const r = await inspector(argv('http', ['--format', 'json', '--method', 'tools/call', '--tool-name', 'no_such_tool']));
    assert.notEqual(r.code, 0, `calling an unknown tool must fail\n${r.stdout}`);
    assert.match(r.stderr + r.stdout, /no_such_tool/);
  });

  test('--strict finds no error-severity tool-schema portability problems', async () => {
    const r = await inspector(argv('http', ['--format', 'json', '--method', 'tools/list', '--strict']));
    assert.equal(r.code, 0, `--strict exit ${r.code} (6 = portability errors):\n${r.stderr}`);
  });

  test('an unknown bearer key fails the connection', async () => {
    const r = await inspector([...targets.http(BAD_KEY), '--format', 'json', '--method', 'tools/list', '--stored-auth-only']);
    assert.notEqual(r.code, 0, `a bad key must not list tools:\n${r.stdout}`);
    assert.equal(r.json?.result, undefined);
    assert.match(r.stderr + r.stdout, /401|auth|Unauthori[sz]ed/i);
  });
});
