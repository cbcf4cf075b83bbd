// The official tasks client (@modelcontextprotocol/ext-tasks) against scigate, in both
// generations it speaks: the experimental tasks of 2025-11-25 (over the v2 client's legacy
// session) and the io.modelcontextprotocol/tasks extension of 2026-07-28 (over the v2
// client's stateless mode, with the raw HTTP dispatch the package asks its host to provide
// for task traffic). wait_job on a real job of the demo's local executor is the task.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { createTaskSessionFromClient, resultFromTaskOutcome } from '@modelcontextprotocol/ext-tasks/client';
import { env } from './lib/harness.mjs';

const MODERN = '2026-07-28';
const CLIENT_INFO = { name: 'scigate-tests-tasks', version: '1.0.0' };
const TASKS = 'io.modelcontextprotocol/tasks';

const transport = () =>
  new StreamableHTTPClientTransport(new URL(env.url), {
    requestInit: { headers: { Authorization: `Bearer ${env.key}` } },
  });

// The host side of 2026-07-28 task traffic: one POST per request with the routing headers the
// era requires (Mcp-Name carries the tool name or the task id).
// 2025-11-25 clients choose per call; an optional tool becomes a task when the caller prefers it.
const PREFER_TASK = { task: { preference: 'prefer' } };
let nextId = 1;
async function rawDispatch(unframed) {
  // The package hands over method and params; the JSON-RPC envelope is the host's.
  const request = { jsonrpc: '2.0', id: `tasks-${nextId++}`, ...unframed };
  const p = request.params ?? {};
  const name = request.method === 'tools/call' ? p.name : p.taskId;
  const headers = {
    Authorization: `Bearer ${env.key}`,
    'Content-Type': 'application/json',
    Accept: 'application/json, text/event-stream',
    'MCP-Protocol-Version': MODERN,
    'Mcp-Method': request.method,
  };
  if (name !== undefined) headers['Mcp-Name'] = name;
  const res = await fetch(env.url, { method: 'POST', headers, body: JSON.stringify(request) });
  const text = await res.text();
  if ((res.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
    // The last data line is the response; earlier ones are notifications.
    const data = text.split('\n').filter((l) => l.startsWith('data: ')).map((l) => JSON.parse(l.slice(6)));
    return data.filter((m) => 'id' in m).at(-1);
  }
  return JSON.parse(text);
}

async function submitJob(client, script) {
  const r = await client.callTool({ name: 'submit_job', arguments: { script, resources: { walltime: '00:02:00' } } });
  assert.equal(r.isError, false, JSON.stringify(r));
  return r.structuredContent.job_id;
}

const generations = {
  '2025-11-25 (v1 tasks)': {
    client: () => new Client(CLIENT_INFO),
    session: (client) => createTaskSessionFromClient(client, { endpointId: 'scigate-v1' }),
    era: 'legacy',
  },
  '2026-07-28 (tasks extension)': {
    client: () => new Client(CLIENT_INFO, { versionNegotiation: { mode: { pin: MODERN } } }),
    session: (client) =>
      createTaskSessionFromClient(client, {
        endpointId: 'scigate-v2',
        rawDispatch,
        v2RequestFraming: { protocolVersion: MODERN, clientInfo: CLIENT_INFO, clientCapabilities: {} },
      }),
    era: 'modern',
  },
};

for (const [label, g] of Object.entries(generations)) {
  describe(`ext-tasks client, ${label}`, () => {
    let client;
    let session;
    before(async () => {
      client = g.client();
      await client.connect(transport());
      assert.equal(client.getProtocolEra(), g.era);
      session = g.session(client);
    });
    after(async () => {
      await session?.close();
      await client?.close();
    });

    test('the server advertises tasks for this generation', () => {
      const caps = client.getServerCapabilities();
      if (g.era === 'modern') assert.deepEqual(caps.extensions?.[TASKS], {});
      else assert.ok(caps.tasks?.requests?.tools?.call, JSON.stringify(caps));
    });

    test('wait_job runs as a task and settles with the job at its end', async () => {
      const jobId = await submitJob(client, 'sleep 1.5; echo from-the-job');
      const execution = await session.callTool('wait_job', { job_id: jobId, timeout_s: 120 }, PREFER_TASK);
      assert.equal(execution.kind, 'task', 'wait_job did not become a task');
      assert.match(execution.handle.taskId, /^t-[0-9a-f]{32}$/);
      const seen = [];
      const { outcome } = await execution.settle({
        onEvent: (e) => {
          if (e.type === 'task') seen.push(e.task.status);
        },
      });
      assert.equal(outcome.status, 'completed', JSON.stringify(outcome));
      const result = resultFromTaskOutcome(outcome);
      assert.equal(result.isError, false);
      assert.equal(result.structuredContent.state, 'COMPLETED');
      assert.equal(result.structuredContent.job_id, jobId);
      assert.ok(seen.includes('working'), `events: ${seen}`);
    });

    test('cancelling the execution cancels the task, not the job', async () => {
      const jobId = await submitJob(client, 'sleep 60');
      const execution = await session.callTool('wait_job', { job_id: jobId, timeout_s: 600 }, PREFER_TASK);
      assert.equal(execution.kind, 'task');
      await execution.cancel();
      const outcome = await execution.result();
      assert.equal(outcome.status, 'cancelled', JSON.stringify(outcome));
      const job = await client.callTool({ name: 'get_job', arguments: { job_id: jobId } });
      assert.notEqual(job.structuredContent.state, 'CANCELED');
      const c = await client.callTool({ name: 'cancel_job', arguments: { job_id: jobId } });
      assert.equal(c.isError, false);
    });

    test('a tool that does not support tasks answers at once', async () => {
      const execution = await session.callTool('whoami', {}, PREFER_TASK);
      assert.equal(execution.kind, 'immediate');
      const { outcome } = await execution.settle();
      assert.equal(resultFromTaskOutcome(outcome).isError, false);
    });
  });
}
