#!/usr/bin/env python3
"""Memory cost of idle 2025-11-25 Streamable HTTP sessions, for bench/run.sh.

    sessions.py --port P --pid SERVER_PID [--key KEY] [--count 10000] [--conns 4]

Reads the server's VmRSS, opens COUNT sessions (POST initialize, then POST
notifications/initialized with the returned Mcp-Session-Id; the sessions are never
DELETEd), waits a moment, reads VmRSS again, checks that a sample of the sessions
still works (tools/call echo answered 200 with a result), and prints one JSON
object: rss_before_kb, rss_after_kb, sessions, bytes_per_session, errors, ...
"""
import argparse
import http.client
import json
import random
import sys
import threading
import time


def rss_kb(pid, field="VmRSS:"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return -1


INIT = json.dumps({
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {},
               "clientInfo": {"name": "scigate-bench", "version": "0"}},
}).encode()
INITIALIZED = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()


def base_headers(key):
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if key:
        h["Authorization"] = "Bearer " + key
    return h


def worker(port, key, n, out, errs):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    hdr = base_headers(key)
    for _ in range(n):
        try:
            conn.request("POST", "/mcp", INIT, hdr)
            r = conn.getresponse()
            body = r.read()
            sid = r.getheader("Mcp-Session-Id")
            if r.status != 200 or not sid or b'"result"' not in body:
                errs.append(f"initialize: {r.status} {body[:200]!r}")
                continue
            h2 = dict(hdr)
            h2["Mcp-Session-Id"] = sid
            h2["MCP-Protocol-Version"] = "2025-11-25"
            conn.request("POST", "/mcp", INITIALIZED, h2)
            r = conn.getresponse()
            r.read()
            if r.status != 202:
                errs.append(f"initialized: {r.status}")
                continue
            out.append(sid)
        except (OSError, http.client.HTTPException) as e:
            errs.append(f"{type(e).__name__}: {e}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.close()  # the sessions stay; only the TCP connection goes


def check(port, key, sids):
    bad = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i, sid in enumerate(sids):
        h = base_headers(key)
        h["Mcp-Session-Id"] = sid
        h["MCP-Protocol-Version"] = "2025-11-25"
        body = json.dumps({"jsonrpc": "2.0", "id": i + 2, "method": "tools/call",
                           "params": {"name": "echo", "arguments": {"text": "still here"}}}).encode()
        conn.request("POST", "/mcp", body, h)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200 or b"still here" not in data:
            bad += 1
    conn.close()
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--key", default="")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--conns", type=int, default=4)
    a = ap.parse_args()

    time.sleep(0.5)
    before = rss_kb(a.pid)
    t0 = time.monotonic()
    sids, errs = [], []
    per = [a.count // a.conns + (1 if i < a.count % a.conns else 0) for i in range(a.conns)]
    ts = [threading.Thread(target=worker, args=(a.port, a.key, n, sids, errs)) for n in per]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    secs = time.monotonic() - t0
    time.sleep(1.0)  # let the server settle (closed connections, freed buffers)
    after = rss_kb(a.pid)
    sample = random.sample(sids, min(50, len(sids)))
    stale = check(a.port, a.key, sample) if sample else 0
    res = {
        "sessions": len(sids),
        "requested": a.count,
        "errors": len(errs),
        "first_error": errs[0] if errs else None,
        "seconds": round(secs, 2),
        "rss_before_kb": before,
        "rss_after_kb": after,
        "hwm_kb": rss_kb(a.pid, "VmHWM:"),
        "bytes_per_session": round((after - before) * 1024 / max(1, len(sids)), 1),
        "sample_checked": len(sample),
        "sample_failed": stale,
    }
    print(json.dumps(res))
    return 0 if not errs and not stale and len(sids) == a.count else 1


if __name__ == "__main__":
    sys.exit(main())
