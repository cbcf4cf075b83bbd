// Reference MCP server for bench/run.sh, built on the official TypeScript SDK v2
// (@modelcontextprotocol/server). It serves the same no-op `echo` tool as
// scigate (input {text: string, maxLength 65536}, output structuredContent {text}).
//
//   node server.mjs --http PORT [--port-file FILE]   Streamable HTTP on 127.0.0.1:PORT/mcp
//                                                     (stateless, JSON responses; PORT 0 = any)
//   node server.mjs --stdio                           newline-delimited JSON-RPC on stdio
//
// No authentication (scigate checks a bearer key on every request; this one does not).
import { createServer } from 'node:http';
import { writeFileSync } from 'node:fs';
import { McpServer, createMcpHandler } from '@modelcontextprotocol/server';
import { toNodeHandler } from '@modelcontextprotocol/node';
import * as z from 'zod';

function makeServer() {
    const server = new McpServer(
        { name: 'ts-echo', version: '0.0.0' },
        { capabilities: { tools: {} } }
    );
    server.registerTool(
        'echo',
        {
            title: 'Echo',
            description: 'Returns the given text unchanged.',
            inputSchema: z.object({ text: z.string().max(65536).describe('Text to return') }).strict(),
            outputSchema: z.object({ text: z.string() }),
            annotations: { readOnlyHint: true, idempotentHint: true, destructiveHint: false, openWorldHint: false }
        },
        async ({ text }) => ({
            content: [{ type: 'text', text }],
            structuredContent: { text }
        })
    );
    return server;
}

const args = process.argv.slice(2);
const opt = (name) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
};

if (args.includes('--stdio')) {
    const { serveStdio } = await import('@modelcontextprotocol/server/stdio');
    serveStdio(makeServer);
} else {
    const port = Number(opt('--http') ?? 0);
    const portFile = opt('--port-file');
    // Stateless: a fresh McpServer per request (the SDK's createMcpHandler model);
    // responseMode 'json' = never upgrade to SSE (the v2 analogue of enableJsonResponse).
    const handler = createMcpHandler(makeServer, { responseMode: 'json' });
    const nodeHandler = toNodeHandler(handler);
    const httpServer = createServer((req, res) => {
        if (req.url !== '/mcp' && !req.url.startsWith('/mcp?')) {
            res.writeHead(404).end();
            return;
        }
        nodeHandler(req, res);
    });
    httpServer.keepAliveTimeout = 60_000;
    httpServer.listen(port, '127.0.0.1', () => {
        const actual = httpServer.address().port;
        if (portFile) writeFileSync(portFile, String(actual));
        process.stderr.write(`ts-echo listening on http://127.0.0.1:${actual}/mcp\n`);
    });
    const stop = () => httpServer.close(() => process.exit(0));
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
}
