// The v2 TypeScript client (@modelcontextprotocol/client) against scigate.
// v2 defaults to the 2025 handshake; with versionNegotiation it speaks the
// stateless 2026-07-28 era (server/discover, per-request _meta, Mcp-Method /
// Mcp-Name headers, cancellation by closing the response stream on HTTP), and
// that era is what these tests pin. A few tests also check its 'auto' and
// default (legacy) negotiation against the dual-era server.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { Client, StreamableHTTPClientTransport, ProtocolError, SUPPORTED_PROTOCOL_VERSIONS } from '@modelcontextprotocol/client';
import { StdioClientTransport } from '@modelcontextprotocol/client/stdio';
import { env, stdioArgs, StderrLog, httpAudit, BAD_KEY, waitFor, readRecords, scratchDir } from './lib/harness.mjs';
import { startAuthProxy } from './lib/auth-proxy.mjs';
import { defineToolChecks } from './lib/tool-checks.mjs';

const MODERN = '2026-07-28';
const CLIENT_INFO = { name: 'scigate-tests-client-v2', version: '2.0.0' };
const pinned = () => new Client(CLIENT_INFO, { versionNegotiation: { mode: { pin: MODERN } } });
const httpTransport = (url = env.url, key = env.key) =>
  new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { Authorization: `Bearer ${key}` } } });

test('what the pinned v2 client offers', () => {
  // Its legacy list stops at 2025-11-25; 2026-07-28 is reached through
  // versionNegotiation (pin or auto), which these tests use.
  assert.ok(SUPPORTED_PROTOCOL_VERSIONS.includes('2025-11-25'));
  assert.equal(typeof Client.prototype.discover, 'function', 'v2 client without server/discover support');
  assert.equal(typeof Client.prototype.getProtocolEra, 'function');
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
  describe(`client v2, ${MODERN} era, over ${kind}`, () => {
    let client;
    let ctx;
    before(async () => {
      ctx = setup();
      client = pinned();
      await client.connect(ctx.transport);
      await client.listTools(); // output-schema validation for later calls
    });
    after(async () => {
      await client?.close();
    });

    test('server/discover: modern era negotiated, versions and capabilities advertised', () => {
      assert.equal(client.getProtocolEra(), 'modern');
      assert.equal(client.getNegotiatedProtocolVersion(), MODERN);
      const d = client.getDiscoverResult();
      assert.ok(d, 'no DiscoverResult recorded');
      assert.ok(d.supportedVersions.includes(MODERN), `supportedVersions: ${d.supportedVersions}`);
      assert.ok(d.supportedVersions.includes('2025-11-25'), `supportedVersions: ${d.supportedVersions}`);
      assert.ok(d.capabilities?.tools, 'tools capability missing');
      const info = client.getServerVersion();
      assert.equal(info?.name, 'scigate', 'serverInfo in the discover result _meta');
    });

    defineToolChecks({
      era: MODERN,
      version: MODERN,
      get authMethod() {
        return ctx.authMethod;
      },
      audit: () => ctx.audit(),
      listTools: () => client.listTools(undefined, { cacheMode: 'bypass' }),
      callTool: (name, args, opts = {}) => client.callTool({ name, arguments: args }, opts),
      protocolErrorCode: (e) => (e instanceof ProtocolError ? e.code : undefined),
    });

    test('subscriptions/listen is acknowledged with the honoured filter, and closes cleanly', async () => {
      const sub = await client.listen({ toolsListChanged: true });
      assert.equal(sub.honoredFilter.toolsListChanged, true, `honoredFilter: ${JSON.stringify(sub.honoredFilter)}`);
      await sub.close();
      // The connection keeps working after the subscription is torn down.
      const r = await client.callTool({ name: 'echo', arguments: { text: 'after listen' } });
      assert.deepEqual(r.structuredContent, { text: 'after listen' });
    });

    if (kind === 'stdio') {
      test('stdin EOF ends the stdio server even while a subscriptions/listen stream is open', async () => {
        const c = pinned();
        const t = new StdioClientTransport({ command: env.bin, args: stdioArgs(), stderr: 'pipe' });
        await c.connect(t);
        const pid = t.pid;
        await c.listen({ toolsListChanged: true });
        // close() ends stdin, waits up to 2 s for the process to exit, and only
        // then falls back to SIGTERM: a server that honours EOF is gone long before.
        const t0 = Date.now();
        await c.close();
        const took = Date.now() - t0;
        assert.ok(took < 1500, `scigate --stdio (pid ${pid}) ignored stdin EOF with a listen stream open: the SDK had to signal it after ${took} ms`);
      });

      test('closing the client ends the stdio server process', async () => {
        const c = pinned();
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
  });
}

describe('client v2 over http: negotiation and wire', () => {
  test("versionNegotiation 'auto' picks the modern era", async () => {
    const c = new Client(CLIENT_INFO, { versionNegotiation: { mode: 'auto' } });
    await c.connect(httpTransport());
    try {
      assert.equal(c.getProtocolEra(), 'modern');
      assert.equal(c.getNegotiatedProtocolVersion(), MODERN);
      const r = await c.callTool({ name: 'whoami', arguments: {} });
      assert.equal(r.structuredContent.protocol.era, MODERN);
    } finally {
      await c.close();
    }
  });

  test('the default (legacy) negotiation still gets a 2025-11-25 session', async () => {
    const c = new Client(CLIENT_INFO);
    const t = httpTransport();
    await c.connect(t);
    try {
      assert.equal(c.getProtocolEra(), 'legacy');
      assert.equal(c.getNegotiatedProtocolVersion(), '2025-11-25');
      assert.ok(t.sessionId, 'legacy era over HTTP must have a session');
      const r = await c.callTool({ name: 'whoami', arguments: {} });
      assert.equal(r.structuredContent.protocol.era, '2025-11-25');
    } finally {
      await c.close();
    }
  });

  test('stateless wire: no initialize, no session, Mcp-Method/Mcp-Name headers match the body', async () => {
    const record = path.join(scratchDir('v2-wire'), 'requests.jsonl');
    const upstream = new URL(env.url).origin;
    const proxy = await startAuthProxy({ upstream, key: null, record });
    const c = pinned();
    const t = httpTransport(`http://127.0.0.1:${proxy.address().port}/mcp`);
    try {
      await c.connect(t);
      await c.listTools(undefined, { cacheMode: 'bypass' });
      const r = await c.callTool({ name: 'echo', arguments: { text: 'wire' } });
      assert.deepEqual(r.structuredContent, { text: 'wire' });
    } finally {
      await c.close();
      proxy.closeAllConnections();
      await new Promise((res) => proxy.close(res));
    }
    const recs = readRecords(record).filter((x) => x.http === 'POST');
    const methods = recs.flatMap((x) => x.rpc);
    assert.ok(methods.includes('server/discover'), `no server/discover in ${methods}`);
    assert.ok(methods.includes('tools/call'), `no tools/call in ${methods}`);
    assert.ok(!methods.includes('initialize'), `a pinned modern client sent initialize: ${methods}`);
    assert.equal(t.sessionId, undefined, 'the 2026-07-28 era has no sessions');
    for (const x of recs.filter((x) => x.rpc.length === 1 && !x.rpc[0].startsWith('notifications/'))) {
      assert.equal(x.mcpMethod, x.rpc[0], `Mcp-Method header vs body: ${JSON.stringify(x)}`);
      assert.equal(x.status, 200, `HTTP status for ${x.rpc[0]}: ${JSON.stringify(x)}`);
      assert.equal(x.protocolVersion, MODERN, `MCP-Protocol-Version header: ${JSON.stringify(x)}`);
      assert.equal(x.session, null, `Mcp-Session-Id sent in the stateless era: ${JSON.stringify(x)}`);
      if (x.rpc[0] === 'tools/call') assert.equal(x.mcpName, x.names[0], `Mcp-Name header vs params.name: ${JSON.stringify(x)}`);
    }
    assert.ok(recs.some((x) => x.rpc[0] === 'tools/call' && x.mcpName === 'echo'), 'no tools/call with Mcp-Name: echo');
  });

  test('an unknown bearer key is refused with 401', async () => {
    const c = pinned();
    await assert.rejects(c.connect(httpTransport(env.url, BAD_KEY)), (e) => {
      assert.match(String(e?.message ?? e), /401|bearer token is not valid|nauthori[sz]ed/i, String(e));
      return true;
    });
  });
});
