#!/usr/bin/env python3
"""A minimal lab-automation controller that calls one scigate tool over Streamable HTTP.

It speaks MCP protocol 2026-07-28: one stateless POST per call, with the protocol version,
method and tool name mirrored into headers and the version and client capabilities in the
body's _meta. Python 3 standard library only.

usage: controller.py [--progress] [--project ID] [TOOL [JSON_ARGUMENTS]]
       (default: whoami {})

environment:
  SCIGATE_API_KEY  bearer key (required), e.g. the lab-controller service key from `scigate init`
  SCIGATE_URL      MCP endpoint (default http://127.0.0.1:8750/mcp)
  SCIGATE_TIMEOUT  seconds to wait for a reply (default 330; the server's tool timeout is 300);
                   with --progress, the longest silence between events

exit status: 0 success, 1 usage or transport problem, 2 authentication failed,
             3 protocol error (JSON-RPC error), 4 the tool reported an error (isError),
             130 interrupted (Ctrl-C; the server cancels the call)
"""
import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
import uuid

PROTOCOL_VERSION = "2026-07-28"
CLIENT_INFO = {"name": "scigate-lab-controller", "version": "0.1.0"}


class Failure(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def header_value(value):
    """Mcp-Name value: plain when it is safe visible ASCII, else the =?base64?...?= form."""
    plain = all(0x20 <= ord(c) <= 0x7E for c in value) and value == value.strip()
    if plain and not (value.startswith("=?base64?") and value.endswith("?=")):
        return value
    return "=?base64?" + base64.b64encode(value.encode("utf-8")).decode("ascii") + "?="


def build_request(url, key, tool, arguments, project, progress):
    meta = {
        "io.modelcontextprotocol/protocolVersion": PROTOCOL_VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
    }
    if project:
        meta["io.scigate/project"] = project
    if progress:
        meta["progressToken"] = "progress-" + uuid.uuid4().hex[:8]
    body = {
        "jsonrpc": "2.0",
        "id": "lab-" + uuid.uuid4().hex[:12],
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": meta},
    }
    headers = {
        "Authorization": "Bearer " + key,
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": PROTOCOL_VERSION,
        "Mcp-Method": "tools/call",
        "Mcp-Name": header_value(tool),
    }
    return urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")


def read_sse(response):
    """Yields the JSON messages of an SSE stream (one `data:` payload per event)."""
    data = []
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if line == "":
            if data:
                yield json.loads("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
        # "event:" lines name the event ("message"); ":" lines are keep-alives.
    if data:
        yield json.loads("\n".join(data))


def call(req, timeout):
    """Sends the request; returns the JSON-RPC response, printing progress notifications."""
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            ctype = response.headers.get("Content-Type", "")
            if not ctype.startswith("text/event-stream"):
                return json.load(response)
            for message in read_sse(response):
                if "id" in message and ("result" in message or "error" in message):
                    return message
                if message.get("method") == "notifications/progress":
                    p = message.get("params", {})
                    total = "/%g" % p["total"] if "total" in p else ""
                    print("progress %g%s %s" % (p.get("progress", 0), total, p.get("message", "")), file=sys.stderr)
            raise Failure(1, "the stream ended without a response")
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace")
        try:
            err = json.loads(text).get("error", {})
        except ValueError:
            err = {}
        detail = err.get("message") or text or e.reason
        if e.code == 401:
            raise Failure(2, "authentication failed (HTTP 401): %s\n  check SCIGATE_API_KEY" % detail)
        if "code" in err:
            return {"error": err, "http_status": e.code}
        raise Failure(1, "HTTP %d: %s" % (e.code, detail))
    except urllib.error.URLError as e:
        raise Failure(1, "cannot reach %s: %s" % (req.full_url, e.reason))
    except TimeoutError:
        raise Failure(1, "no answer within %g s (SCIGATE_TIMEOUT); the call is cancelled on the server" % timeout)
    except OSError as e:
        raise Failure(1, "connection to %s failed: %s" % (req.full_url, e))


def main():
    ap = argparse.ArgumentParser(description="Call one scigate tool (MCP 2026-07-28 over HTTP).")
    ap.add_argument("tool", nargs="?", default="whoami")
    ap.add_argument("arguments", nargs="?", default="{}", help="tool arguments as a JSON object")
    ap.add_argument("--project", default=os.environ.get("SCIGATE_PROJECT", ""),
                    help="project to act for (default: the key's first project)")
    ap.add_argument("--progress", action="store_true", help="ask for progress notifications (SSE)")
    opts = ap.parse_args()

    key = os.environ.get("SCIGATE_API_KEY", "")
    url = os.environ.get("SCIGATE_URL", "http://127.0.0.1:8750/mcp")
    try:
        if not key:
            raise Failure(1, "set SCIGATE_API_KEY to a scigate API key (sgk_...)")
        try:
            arguments = json.loads(opts.arguments)
        except ValueError as e:
            raise Failure(1, "arguments are not valid JSON: %s" % e)
        if not isinstance(arguments, dict):
            raise Failure(1, "arguments must be a JSON object")
        timeout = float(os.environ.get("SCIGATE_TIMEOUT", "330"))
        reply = call(build_request(url, key, opts.tool, arguments, opts.project, opts.progress), timeout)

        if "error" in reply:
            err = reply["error"]
            where = " (HTTP %d)" % reply["http_status"] if "http_status" in reply else ""
            msg = "JSON-RPC error %s%s: %s" % (err.get("code"), where, err.get("message"))
            if "data" in err:
                msg += "\n  data: " + json.dumps(err["data"])
            raise Failure(3, msg)
        result = reply["result"]
        if result.get("isError"):
            err = result.get("_meta", {}).get("io.scigate/error", {})
            text = " ".join(c.get("text", "") for c in result.get("content", []) if c.get("type") == "text")
            msg = "tool error [%s]: %s" % (err.get("code", "unknown"), err.get("message", text))
            if err.get("hint"):
                msg += "\n  hint: " + err["hint"]
            raise Failure(4, msg)
        if "structuredContent" in result:
            print(json.dumps(result["structuredContent"], indent=2, sort_keys=True))
        else:
            for c in result.get("content", []):
                print(c.get("text", json.dumps(c)))
        return 0
    except Failure as f:
        print("controller: " + str(f), file=sys.stderr)
        return f.status
    except KeyboardInterrupt:
        # Closing the connection is the cancellation signal in 2026-07-28: the server stops the call.
        print("controller: interrupted; the call is cancelled on the server", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # stdout's reader went away (e.g. `| head`); nothing left to report
        return 1


if __name__ == "__main__":
    sys.exit(main())
