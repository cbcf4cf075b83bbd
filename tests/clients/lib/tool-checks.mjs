// Behaviour checks shared by the SDK v1 and client v2 suites. Each suite
// supplies an adapter around its own official client object, so the same
// expectations are exercised through both SDK generations and both transports.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { waitFor } from './harness.mjs';

const DEMO_TOOLS = ['echo', 'get_usage', 'sleep', 'whoami'];

/**
 * s: {
 *   client()            -> the connected client (after before())
 *   era                 '2025-11-25' | '2026-07-28'
 *   version             negotiated protocol version expected in whoami
 *   authMethod          'api_key' | 'stdio'
 *   audit()             -> audit records the server has logged so far
 *   listTools()         -> {tools}
 *   callTool(name, args, {onprogress, signal}) -> CallToolResult
 *   protocolErrorCode(e) -> JSON-RPC error code carried by a rejected call
 * }
 */
export function defineToolChecks(s) {
  test('tools/list: the demo tools, each with title, annotations, inputSchema and outputSchema', async () => {
    const { tools } = await s.listTools();
    const names = tools.map((t) => t.name).sort();
    for (const n of DEMO_TOOLS) assert.ok(names.includes(n), `tools/list lacks ${n}: got ${names.join(', ')}`);
    for (const t of tools.filter((x) => DEMO_TOOLS.includes(x.name))) {
      assert.equal(typeof t.description, 'string', `${t.name}: description`);
      assert.ok(t.description.length > 10, `${t.name}: description too short`);
      assert.equal(typeof t.title, 'string', `${t.name}: title`);
      assert.equal(t.inputSchema?.type, 'object', `${t.name}: inputSchema.type`);
      assert.equal(t.outputSchema?.type, 'object', `${t.name}: outputSchema.type`);
      assert.ok(t.annotations, `${t.name}: annotations missing`);
      for (const hint of ['readOnlyHint', 'destructiveHint', 'idempotentHint', 'openWorldHint']) {
        assert.equal(typeof t.annotations[hint], 'boolean', `${t.name}: annotations.${hint}`);
      }
      // All three demo tools only read: nothing may claim otherwise.
      assert.equal(t.annotations.readOnlyHint, true, `${t.name}: readOnlyHint`);
      assert.equal(t.annotations.destructiveHint, false, `${t.name}: destructiveHint`);
    }
    const echo = tools.find((t) => t.name === 'echo');
    assert.deepEqual(echo.inputSchema.required, ['text']);
    assert.equal(echo.inputSchema.properties.text.type, 'string');
    assert.equal(echo.outputSchema.properties.text.type, 'string');
    const sleep = tools.find((t) => t.name === 'sleep');
    assert.equal(sleep.inputSchema.properties.seconds.type, 'number');
    assert.equal(sleep.outputSchema.properties.slept_seconds.type, 'number');
    const whoami = tools.find((t) => t.name === 'whoami');
    for (const f of ['principal', 'kind', 'auth_method', 'projects', 'project', 'server', 'protocol']) {
      assert.ok(whoami.outputSchema.required.includes(f), `whoami outputSchema.required lacks ${f}`);
    }
  });

  test('whoami: structuredContent names the caller, project, server and protocol era', async () => {
    const r = await s.callTool('whoami', {});
    assert.equal(r.isError ?? false, false, JSON.stringify(r));
    const sc = r.structuredContent;
    assert.ok(sc, 'no structuredContent');
    assert.equal(sc.principal, 'demo');
    assert.equal(sc.kind, 'user');
    assert.equal(sc.auth_method, s.authMethod);
    assert.deepEqual(sc.projects, ['demo']);
    assert.equal(sc.default_project, 'demo');
    assert.equal(sc.project, 'demo');
    assert.equal(sc.server.name, 'scigate');
    assert.match(sc.server.version, /^\d+\.\d+\.\d+/);
    assert.equal(sc.protocol.era, s.era);
    assert.equal(sc.protocol.version, s.version);
    // Backwards-compatible text block for clients that ignore structuredContent.
    const text = r.content.find((c) => c.type === 'text');
    assert.ok(text, 'no text content block');
    assert.match(text.text, /demo/);
  });

  test('echo: returns its text unchanged in structuredContent and as text content', async () => {
    const input = 'héllo ✓ "quoted" \\ back\nsecond line\t🚀';
    const r = await s.callTool('echo', { text: input });
    assert.equal(r.isError ?? false, false, JSON.stringify(r));
    assert.deepEqual(r.structuredContent, { text: input });
    assert.deepEqual(
      r.content.filter((c) => c.type === 'text').map((c) => c.text),
      [input],
    );
  });

  test('sleep: progress notifications arrive in order, then the result', async () => {
    const progress = [];
    const t0 = Date.now();
    const r = await s.callTool('sleep', { seconds: 0.6, steps: 3 }, { onprogress: (p) => progress.push({ ...p, at: Date.now() - t0 }) });
    assert.equal(r.isError ?? false, false, JSON.stringify(r));
    assert.deepEqual(r.structuredContent, { slept_seconds: 0.6 });
    // The server sends progress 1, 2, 3 and then the result. Both SDKs run
    // notification handlers in a microtask but settle responses synchronously,
    // so when the last notification and the response arrive in the same read
    // (a loaded machine), the client drops that notification itself: accept
    // 1, 2 with or without 3, in order.
    const seen = progress.map((p) => p.progress);
    assert.ok(
      JSON.stringify(seen) === '[1,2,3]' || JSON.stringify(seen) === '[1,2]',
      `expected progress 1, 2, 3 in order, got ${JSON.stringify(progress)}`,
    );
    for (const p of progress) assert.equal(p.total, 3);
    for (const p of progress) assert.equal(typeof p.message, 'string');
    // They must arrive while the call runs, not batched at the end.
    assert.ok(progress[0].at < 500, `first progress came only after ${progress[0].at} ms`);
    assert.ok(Date.now() - t0 >= 550, 'sleep returned before its time');
  });

  test('sleep: cancelling through an AbortSignal stops it on the server, which keeps serving', async () => {
    const ac = new AbortController();
    let firstProgress;
    const started = new Promise((resolve) => (firstProgress = resolve));
    const t0 = Date.now();
    const call = s.callTool('sleep', { seconds: 20, steps: 40 }, { signal: ac.signal, onprogress: () => firstProgress() });
    call.catch(() => {});
    await Promise.race([started, call]);
    const abortedAt = Date.now();
    ac.abort('test cancels the sleep');
    await assert.rejects(call, 'the aborted call must reject');
    assert.ok(Date.now() - abortedAt < 1000, 'the client did not give up promptly');
    // The server's audit record is the proof that the tool itself stopped.
    // time_ms is when the server started the call: pick the record of this one.
    const rec = await waitFor(
      () => s.audit().find((a) => a.tool === 'sleep' && a.time_ms >= t0 - 50),
      {
        timeoutMs: 3000,
        what:
          'the server to end the cancelled sleep (its audit record). The client did cancel it ' +
          '(notifications/cancelled on stdio and on 2025-era HTTP, closing the response stream on 2026-era HTTP); ' +
          'the server kept running it',
      },
    );
    assert.equal(rec.outcome, 'cancelled', `audit: ${JSON.stringify(rec)}`);
    const ranMs = rec.duration_us / 1000;
    const cancelAfterMs = abortedAt - t0;
    assert.ok(ranMs < cancelAfterMs + 1500, `server ran the sleep ${ranMs} ms though it was cancelled after ${cancelAfterMs} ms`);
    // And the connection/session is still usable.
    const r = await s.callTool('echo', { text: 'still here' });
    assert.deepEqual(r.structuredContent, { text: 'still here' });
  });

  test('unknown tool: JSON-RPC error -32602 naming the tool', async () => {
    let err;
    try {
      await s.callTool('no_such_tool', {});
    } catch (e) {
      err = e;
    }
    assert.ok(err, 'calling an unknown tool must fail with a protocol error');
    assert.equal(s.protocolErrorCode(err), -32602, String(err));
    assert.match(String(err.message), /no_such_tool/);
  });

  test('invalid arguments: isError result whose text says what is wrong and how to fix it', async () => {
    const cases = [
      { name: 'echo', args: { text: 42 }, expect: [/text/, /type/i] },
      { name: 'echo', args: {}, expect: [/text/, /required|missing/i] },
      { name: 'echo', args: { text: 'x', colour: 'red' }, expect: [/colour|additional/i] },
      { name: 'sleep', args: { seconds: -1 }, expect: [/seconds/, /greater than or equal|minimum|>=|at least/i] },
    ];
    for (const c of cases) {
      const r = await s.callTool(c.name, c.args);
      const label = `${c.name}(${JSON.stringify(c.args)})`;
      assert.equal(r.isError, true, `${label} must give isError: ${JSON.stringify(r)}`);
      const text = r.content.filter((x) => x.type === 'text').map((x) => x.text).join('\n');
      for (const re of c.expect) assert.match(text, re, `${label}: unhelpful error text: ${text}`);
      assert.match(text, /inputSchema|tools\/list/i, `${label}: error should point at the schema: ${text}`);
      assert.equal(r.structuredContent, undefined, `${label}: an error result must not claim structured output`);
    }
  });
}
