#!/usr/bin/env node
// Transparent tap for a stdio MCP server, so a test can see what a client that
// spawns its own server process (Claude Code, OpenCode) actually exchanged.
//
//   node stdio-tap.mjs RECORD_FILE -- COMMAND [ARGS...]
//
// Runs COMMAND with stdin/stdout piped through unchanged (stderr inherited) and
// appends one JSON line per JSON-RPC message to RECORD_FILE:
//   {"dir":"c2s"|"s2c","method":...,"id":...,"error":<code or null>}
// Exits with the child's exit status; EOF on our stdin is passed on.
import { spawn } from 'node:child_process';
import fs from 'node:fs';

const argv = process.argv.slice(2);
const sep = argv.indexOf('--');
if (sep !== 1 || argv.length < 3) {
  console.error('usage: stdio-tap.mjs RECORD_FILE -- COMMAND [ARGS...]');
  process.exit(2);
}
const recordFile = argv[0];
const [command, ...args] = argv.slice(2);

function recorder(dir) {
  let buf = '';
  return (chunk) => {
    buf += chunk.toString('utf8');
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line) continue;
      let rec;
      try {
        const m = JSON.parse(line);
        rec = { dir, method: m.method ?? null, id: m.id ?? null, error: m.error ? m.error.code : null, result: m.result !== undefined };
      } catch {
        rec = { dir, unparsable: line.slice(0, 200) };
      }
      fs.appendFileSync(recordFile, JSON.stringify(rec) + '\n');
    }
  };
}

const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'inherit'] });
const c2s = recorder('c2s');
const s2c = recorder('s2c');
process.stdin.on('data', (d) => {
  c2s(d);
  child.stdin.write(d);
});
process.stdin.on('end', () => child.stdin.end());
child.stdin.on('error', () => {});
child.stdout.on('data', (d) => {
  s2c(d);
  process.stdout.write(d);
});
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(sig, () => child.kill(sig));
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 128 : 1)));
