// A small transparent reverse proxy in front of scigate's HTTP endpoint.
//
// Some clients under test have no way to send a bearer token (the conformance
// CLI's server mode, for one). This proxy adds `Authorization: Bearer <key>` to
// requests that carry none and otherwise passes everything through unchanged:
// method, path, every header including Host and Origin (the DNS-rebinding
// checks depend on that), the body, and the response streamed back as it
// arrives (SSE). When the client drops its connection the upstream request is
// dropped too, so "closing the stream" keeps its meaning.
//
// It also records one JSON line per request (HTTP method, JSON-RPC method(s),
// Mcp-Method header, response status) so tests can assert what a client
// actually sent.
//
// Usage as a program:
//   node auth-proxy.mjs --upstream http://127.0.0.1:PORT --key KEY \
//        [--record FILE] [--port-file FILE]
// Prints "listening PORT" on stdout once ready; stops on SIGTERM.
import http from 'node:http';
import fs from 'node:fs';

export function startAuthProxy({ upstream, key, record, port = 0 }) {
  const up = new URL(upstream);
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const headers = { ...req.headers };
      if (!headers.authorization && key) headers.authorization = `Bearer ${key}`;
      // The body is buffered: forward it with an exact length.
      delete headers['transfer-encoding'];
      if (body.length > 0 || req.headers['content-length'] !== undefined) headers['content-length'] = String(body.length);
      const upReq = http.request({
        host: up.hostname,
        port: up.port,
        method: req.method,
        path: req.url,
        headers,
        setHost: false,
      });
      let entry = null;
      if (record) {
        entry = {
          http: req.method,
          path: req.url,
          mcpMethod: req.headers['mcp-method'] ?? null,
          mcpName: req.headers['mcp-name'] ?? null,
          protocolVersion: req.headers['mcp-protocol-version'] ?? null,
          session: req.headers['mcp-session-id'] ?? null,
          rpc: [],
          names: [],
        };
        try {
          const parsed = JSON.parse(body.toString('utf8'));
          for (const m of Array.isArray(parsed) ? parsed : [parsed]) {
            if (m && typeof m === 'object') {
              entry.rpc.push(m.method ?? (m.result !== undefined ? 'response' : 'error-response'));
              entry.names.push(m.params?.name ?? null);
            }
          }
        } catch {
          /* not JSON (GET/DELETE or garbage on purpose) */
        }
      }
      upReq.on('response', (upRes) => {
        if (entry) {
          entry.status = upRes.statusCode;
          fs.appendFileSync(record, JSON.stringify(entry) + '\n');
        }
        res.writeHead(upRes.statusCode, upRes.statusMessage, upRes.rawHeaders);
        res.flushHeaders();
        upRes.pipe(res);
        upRes.on('error', () => res.destroy());
      });
      upReq.on('error', (err) => {
        if (entry) {
          entry.status = 'upstream-error';
          entry.error = String(err);
          fs.appendFileSync(record, JSON.stringify(entry) + '\n');
        }
        if (!res.headersSent) {
          res.writeHead(502, { 'content-type': 'text/plain' });
          res.end(`auth-proxy: upstream error: ${err}`);
        } else {
          res.destroy();
        }
      });
      // Client went away before the response finished: drop the upstream leg too.
      res.on('close', () => {
        if (!res.writableFinished) upReq.destroy();
      });
      upReq.end(body);
    });
  });
  server.keepAliveTimeout = 5000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = process.argv.slice(2);
  const opt = (name) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const server = await startAuthProxy({ upstream: opt('--upstream'), key: opt('--key'), record: opt('--record') });
  const port = server.address().port;
  if (opt('--port-file')) fs.writeFileSync(opt('--port-file'), `${port}\n`);
  console.log(`listening ${port}`);
  const stop = () => {
    server.closeAllConnections?.();
    server.close(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
