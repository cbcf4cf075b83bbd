// The v1 TypeScript SDK (@modelcontextprotocol/sdk) as a client of scigate,
// over stdio and Streamable HTTP. v1 speaks the 2025-11-25 era (initialize +
// sessions), so that is the era tested here.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpError, LATEST_PROTOCOL_VERSION } from '@modelcontextprotocol/sdk/types.js';
import { env, stdioArgs, StderrLog, httpAudit, BAD_KEY, waitFor } from './lib/harness.mjs';
import { defineToolChecks } from './lib/tool-checks.mjs';

const ERA = '2025-11-25';
const CLIENT_INFO = { name: 'scigate-tests-sdk-v1', version: '1.0.0' };

const httpTransport = (key = env.key) =>
  new StreamableHTTPClientTransport(new URL(env.url), { requestInit: { headers: { Authorization: `Bearer ${key}` } } });

test('the pinned v1 SDK negotiates 2025-11-25 by default', () => {
  assert.equal(LATEST_PROTOCOL_VERSION, ERA);
});

const setups = {
  stdio: () => {
    const transport = new StdioClientTransport({ command: env.bin, args: stdioArgs(), stderr: 'pipe' });
    const log = new StderrLog(transport.stderr);
    return { transport, audit: () => log.audit(), authMethod: 'stdio' };
  },
  http: () => ({ transport: httpTransport(), audit: httpAudit, authMethod: 'api_key' }),
};

for (const [kind, setup] of Object.entries(setups)) {
  describe(`SDK v1 over ${kind}`, () => {
    let client;
    let ctx;
    before(async () => {
      ctx = setup();
      client = new Client(CLIENT_INFO);
      await client.connect(ctx.transport);
      // Populates the SDK's output-schema validators, so every later callTool
      // also checks structuredContent against the tool's outputSchema.
      await client.listTools();
    });
    after(async () => {
      await client?.close();
    });

    test('initialize: server identity, tools capability, 2025-11-25', () => {
      const info = client.getServerVersion();
      assert.equal(info.name, 'scigate');
      assert.match(info.version, /^\d+\.\d+\.\d+/);
      assert.ok(client.getServerCapabilities()?.tools, 'tools capability missing');
      if (kind === 'http') {
        assert.equal(ctx.transport.protocolVersion, ERA);
        assert.match(ctx.transport.sessionId ?? '', /^[\x21-\x7e]+$/, 'no (visible-ASCII) Mcp-Session-Id');
      }
    });

    test('ping', async () => {
      assert.deepEqual(await client.ping(), {});
    });

    defineToolChecks({
      era: ERA,
      version: ERA,
      get authMethod() {
        return ctx.authMethod;
      },
      audit: () => ctx.audit(),
      listTools: () => client.listTools(),
      callTool: (name, args, opts = {}) => client.callTool({ name, arguments: args }, undefined, opts),
      protocolErrorCode: (e) => (e instanceof McpError ? e.code : undefined),
    });

    if (kind === 'stdio') {
      test('closing the client ends the stdio server process', async () => {
        const c = new Client(CLIENT_INFO);
        const t = new StdioClientTransport({ command: env.bin, args: stdioArgs(), stderr: 'pipe' });
        await c.connect(t);
        const pid = t.pid;
        assert.ok(pid > 0);
        await c.close();
        await waitFor(
          () => {
            try {
              process.kill(pid, 0);
              return false;
            } catch {
              return true;
            }
          },
          { timeoutMs: 3000, what: `scigate --stdio (pid ${pid}) to exit after stdin EOF` },
        );
      });
    }

    if (kind === 'http') {
      test('an unknown bearer key is refused with 401', async () => {
        const c = new Client(CLIENT_INFO);
        await assert.rejects(c.connect(httpTransport(BAD_KEY)), (e) => {
          assert.equal(e?.code, 401, `expected HTTP 401, got ${e}`);
          assert.match(String(e.message), /bearer token is not valid/);
          return true;
        });
      });

      test('a service key is seen as the service principal', async () => {
        const c = new Client(CLIENT_INFO);
        await c.connect(httpTransport(env.serviceKey));
        try {
          const r = await c.callTool({ name: 'whoami', arguments: {} });
          assert.equal(r.structuredContent.principal, 'lab-controller');
          assert.equal(r.structuredContent.kind, 'service');
          assert.equal(r.structuredContent.auth_method, 'api_key');
        } finally {
          await c.close();
        }
      });

      test('terminateSession (DELETE) ends the session: its id is then answered with 404', async () => {
        const t = httpTransport();
        const c = new Client(CLIENT_INFO);
        await c.connect(t);
        const sid = t.sessionId;
        assert.ok(sid);
        await t.terminateSession();
        const res = await fetch(env.url, {
          method: 'POST',
          headers: {
            Authorization: `Bearer ${env.key}`,
            'Content-Type': 'application/json',
            Accept: 'application/json, text/event-stream',
            'Mcp-Session-Id': sid,
            'MCP-Protocol-Version': ERA,
          },
          body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list', params: {} }),
        });
        await res.body?.cancel();
        assert.equal(res.status, 404, 'a request on a terminated session must get 404');
        await c.close();
      });
    }
  });
}
