// The official OpenAI SDK for Node (npm "openai") against scigate's OpenAI-compatible API:
// unchanged client code, a scigate API key, the demo project's policy and credits. The backend
// is the vLLM test double (tests/support/inference_double.cpp) that run.sh starts for this
// suite; it generates "w0 w1 ..." so the answers can be checked exactly.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { env, BAD_KEY, waitFor } from './lib/harness.mjs';

const MODEL = 'llama-3.1-8b-instruct';
const baseURL = () => env.url.replace(/\/mcp$/, '/v1');
const client = (apiKey = env.key) => new OpenAI({ baseURL: baseURL(), apiKey, maxRetries: 0 });
const messages = [{ role: 'user', content: 'Hello, world!' }];

before(async () => {
  // The server reads the backend's /v1/models shortly after it starts.
  await waitFor(async () => (await client().models.list()).data.some((m) => m.id === MODEL), { timeoutMs: 10000, what: 'the backend to be served' });
});

test('models.list shows the served models the demo policy admits', async () => {
  const ids = (await client().models.list()).data.map((m) => m.id).sort();
  assert.deepEqual(ids, ['bge-m3', MODEL]);
});

test('chat.completions.create answers like OpenAI, with usage', async () => {
  const r = await client().chat.completions.create({ model: MODEL, messages, max_tokens: 5 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.choices[0].message.content, 'w0 w1 w2 w3 w4');
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.prompt_tokens, 8);
  assert.equal(r.usage.completion_tokens, 5);
});

test('streaming with include_usage: chunks as they come, then the usage chunk', async () => {
  const stream = await client().chat.completions.create({
    model: MODEL, messages, max_tokens: 4, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.choices.length) text += chunk.choices[0].delta.content ?? '';
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, 'w0 w1 w2 w3');
  assert.equal(usage.completion_tokens, 4);
});

test('embeddings.create with the SDK default (base64) decodes to unit vectors', async () => {
  const r = await client().embeddings.create({ model: 'bge-m3', input: ['a b', 'c'] });
  assert.equal(r.data.length, 2);
  const v = r.data[0].embedding;
  assert.equal(v.length, 8);
  const norm = Math.sqrt(v.reduce((s, x) => s + x * x, 0));
  assert.ok(Math.abs(norm - 1) < 1e-5, `norm ${norm}`);
  assert.equal(r.usage.prompt_tokens, 3);
});

test('refusals are the SDK error classes, with scigate messages', async () => {
  await assert.rejects(
    client().chat.completions.create({ model: 'qwen-72b', messages }),
    (e) => e instanceof OpenAI.PermissionDeniedError && /members-small-models/.test(e.message),
  );
  await assert.rejects(
    client().chat.completions.create({ model: MODEL, messages, max_tokens: 10000 }),
    (e) => e instanceof OpenAI.PermissionDeniedError && /max_tokens/.test(e.message),
  );
  await assert.rejects(client(BAD_KEY).models.list(), (e) => e instanceof OpenAI.AuthenticationError);
});
