#!/usr/bin/env python3
"""A test double of IBM Quantum's Qiskit Runtime REST API (and of IBM Cloud IAM's token
endpoint), for scigate's remote-QPU connector. No real service is reachable from CI, so this
reproduces the requests and answers the connector depends on, as the public API reference and
guides describe them (quantum.cloud.ibm.com/docs/api/qiskit-runtime-rest, the "Sampler with
the REST API" guide, cloud.ibm.com/docs/account?topic=account-iamtoken_from_apikey):

  POST /identity/token            form grant_type=urn:ibm:params:oauth:grant-type:apikey&apikey=K
                                  -> {access_token, refresh_token: "not_supported", token_type:
                                  "Bearer", expires_in, expiration, scope}; a wrong key -> 400
                                  {errorCode: "BXNIM0415E", errorMessage, context}
  every /api/v1 call              Authorization: Bearer <token> (expired/unknown -> 401),
                                  Service-CRN (wrong -> 403), IBM-API-Version (recorded)
  GET  /api/v1/backends/B/configuration   n_qubits, basis_gates, coupling_map (directed pairs)
  GET  /api/v1/backends/B/status          {state, status: "active", length_queue, ...}
  POST /api/v1/jobs               {program_id: "sampler", backend, params: {pubs: [[qasm3,
                                  null, shots]] | [{circuit, shots}], shots?, version: 2}}
                                  -> 200 {id, backend}; unknown backend -> 404; bad body -> 400
                                  {errors: [{code, message, more_info}], trace, status_code}
  GET  /api/v1/jobs/ID            {id, backend, status, state: {status, reason, reason_code?},
                                  created, program: {id}, usage: {seconds}} - "Queued" for
                                  --queue-ms, "Running" for --run-ms, then "Completed"
  GET  /api/v1/jobs/ID/results    {results: [{data: {<creg>: {samples: ["0x3", ...], num_bits}},
                                  metadata}], metadata: {execution, version: 2}} - one hex sample
                                  per shot and classical register, bit i of the value = bit i of
                                  the register
  POST /api/v1/jobs/ID/cancel     204; a job in a final state -> 409
  DELETE /api/v1/jobs/ID          204 (the job is forgotten)

Quirks kept: an ISA violation is not refused at submission but makes the job "Failed" with
reason "Error code 1517; ..." (the service checks the circuit when it runs it); a job cut for
running too long has status "Cancelled - Ran too long" (a timeout, not a user cancel).

The "device" really runs the circuit (a numpy state vector over the declared qubits, native
gates rz, sx, x, id, ecr, cz, rzz only; terminal measurements), so counts are physical.

Control (tests only): GET /_control/stats; POST /_control {"next_job": "fail" | "ran_too_long"
| "lost", "queue_ms": N, "run_ms": N, "token_ttl_s": N, "down": bool, "revoke_tokens": true}.

Usage: ibm_runtime_double.py --port-file F [--api-key K] [--crn C] [--backend NAME]
       [--basis ecr,id,rz,sx,x] [--coupling 0-1,1-2,...] [--qubits N] [--queue-ms N] [--run-ms N]
"""
import argparse
import cmath
import json
import math
import random
import re
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    import numpy as np
except ImportError:  # the C++ tests skip when the double cannot run
    sys.exit(77)

LOCK = threading.Lock()
STATE = {
    "tokens": {},  # token -> expiry (unix s)
    "tokens_issued": 0,
    "jobs": {},  # id -> job dict
    "jobs_submitted": 0,
    "requests": [],  # (method, path)
    "last_headers": {},
    "next_job": None,
    "down": False,
}
ARGS = None


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


def error_body(status, message, code="invalid_request"):
    return {"errors": [{"code": code, "message": message, "more_info": "https://docs.quantum.ibm.com/errors"}],
            "trace": secrets.token_hex(16), "status_code": status}


# ---- the device: a tiny OpenQASM 3 reader for native-gate circuits and a state vector ----

GATE = re.compile(r"^([a-z]+)(?:\(([^)]*)\))?\s+(.+);$")
QREF = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\[(\d+)\]$|^\$(\d+)$")


def eval_param(text):
    text = text.strip().replace("pi", str(math.pi))
    if not re.fullmatch(r"[0-9eE+\-*/. ()]+", text):
        raise ValueError("cannot read parameter " + text)
    return float(eval(text, {"__builtins__": {}}, {}))  # digits and operators only


def run_circuit(qasm, shots, basis, coupling):
    """Returns ({creg: [sample ints]}, {creg: size}) or raises ValueError(reason)."""
    qregs, cregs, ops, measures = {}, {}, [], []
    nq = 0
    lines = [l.strip() for l in re.sub(r"//[^\n]*", "", qasm).split("\n")]
    for line in lines:
        if not line or line.startswith("OPENQASM") or line.startswith("include") or line.startswith("barrier"):
            continue
        m = re.match(r"^qubit\[(\d+)\]\s+(\w+);$", line)
        if m:
            qregs[m.group(2)] = (nq, int(m.group(1)))
            nq += int(m.group(1))
            continue
        m = re.match(r"^bit\[(\d+)\]\s+(\w+);$", line)
        if m:
            cregs[m.group(2)] = int(m.group(1))
            continue
        m = re.match(r"^(\w+)\[(\d+)\]\s*=\s*measure\s+(.+);$", line)
        if m:
            measures.append((m.group(1), int(m.group(2)), qubit(m.group(3), qregs)))
            continue
        m = GATE.match(line)
        if not m:
            raise ValueError("Error code 1501; the program could not be read at: " + line)
        name = m.group(1)
        params = [eval_param(p) for p in m.group(2).split(",")] if m.group(2) else []
        qs = [qubit(a.strip(), qregs) for a in m.group(3).split(",")]
        if name not in basis:
            raise ValueError("Error code 1517; The instruction %s on qubits %s is not supported by the target"
                             % (name, tuple(qs)))
        if len(qs) == 2 and [qs[0], qs[1]] not in coupling:
            raise ValueError("Error code 1517; The instruction %s on qubits %s is not supported by the target"
                             % (name, tuple(qs)))
        if measures:
            raise ValueError("Error code 1520; mid-circuit measurement is not supported by this backend")
        ops.append((name, params, qs))
    if nq > ARGS.qubits:
        raise ValueError("Error code 1512; the circuit has %d qubits, the backend %d" % (nq, ARGS.qubits))
    if nq > 16:
        raise ValueError("the double simulates at most 16 qubits")
    state = np.zeros(2 ** nq, dtype=complex)
    state[0] = 1
    for name, params, qs in ops:
        state = apply(state, nq, matrix(name, params), qs)
    probs = np.abs(state) ** 2
    probs /= probs.sum()
    rng = random.Random(ARGS.seed)
    outcomes = rng.choices(range(len(probs)), weights=probs.tolist(), k=shots) if nq else [0] * shots
    samples = {c: [0] * shots for c in cregs}
    for s, basis_state in enumerate(outcomes):
        for creg, bit, q in measures:
            if (basis_state >> q) & 1:
                samples[creg][s] |= 1 << bit
    return samples, cregs


def qubit(text, qregs):
    m = QREF.match(text.strip())
    if not m:
        raise ValueError("Error code 1501; cannot read qubit " + text)
    if m.group(3) is not None:
        return int(m.group(3))
    off, size = qregs[m.group(1)]
    if int(m.group(2)) >= size:
        raise ValueError("Error code 1501; index out of range: " + text)
    return off + int(m.group(2))


def matrix(name, p):
    s2 = 1 / math.sqrt(2)
    if name == "id":
        return np.eye(2)
    if name == "x":
        return np.array([[0, 1], [1, 0]], dtype=complex)
    if name == "sx":
        return 0.5 * np.array([[1 + 1j, 1 - 1j], [1 - 1j, 1 + 1j]])
    if name == "rz":
        return np.array([[cmath.exp(-0.5j * p[0]), 0], [0, cmath.exp(0.5j * p[0])]])
    if name == "cz":
        return np.diag([1, 1, 1, -1]).astype(complex)
    if name == "ecr":  # (IX - XY)/sqrt(2), index bit 0 = first qubit (Qiskit's order)
        return s2 * np.array([[0, 1, 0, 1j], [1, 0, -1j, 0], [0, 1j, 0, 1], [-1j, 0, 1, 0]])
    if name == "rzz":
        a, b = cmath.exp(-0.5j * p[0]), cmath.exp(0.5j * p[0])
        return np.diag([a, b, b, a])
    raise ValueError("Error code 1517; unknown instruction " + name)


def apply(state, nq, u, qs):
    k = len(qs)
    psi = state.reshape([2] * nq)  # axis j = qubit nq-1-j
    axes = [nq - 1 - q for q in reversed(qs)]  # matrix index bit j = qs[j]: last axis = qs[0]
    u = u.reshape([2] * (2 * k))
    out = np.tensordot(u, psi, axes=(list(range(k, 2 * k)), axes))
    out = np.moveaxis(out, list(range(k)), axes)
    return out.reshape(-1)


# ---- jobs ----

def job_status(job, now):
    if job["final"]:
        return job["final"]
    t = now - job["created"]
    if t < job["queue_ms"] / 1000:
        return "Queued"
    if t < (job["queue_ms"] + job["run_ms"]) / 1000:
        return "Running"
    fate = job["fate"]
    if fate == "fail" or job.get("error"):
        job["final"] = "Failed"
    elif fate == "ran_too_long":
        job["final"] = "Cancelled - Ran too long"
    else:
        job["final"] = "Completed"
    job["ended"] = now
    return job["final"]


def job_json(job, now):
    status = job_status(job, now)
    state = {"status": status, "reason": ""}
    if status == "Failed":
        state["reason"] = job.get("error") or "Error code 1500; the job failed on the device"
        state["reason_code"] = 1517 if "1517" in state["reason"] else 1500
    if status == "Cancelled - Ran too long":
        state["reason"] = "Job ran longer than the maximum execution time"
    used = 0.0
    if status in ("Running",) or job.get("ended"):
        used = round(min(now, job.get("ended") or now) - job["created"] - job["queue_ms"] / 1000, 3)
    return {"id": job["id"], "backend": job["backend"], "status": status, "state": state,
            "created": iso(job["created"]), "program": {"id": "sampler"}, "runtime": "",
            "usage": {"seconds": max(0.0, used)}, "private": False, "tags": job["tags"]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send(self, status, body=None, ctype="application/json"):
        data = b"" if body is None else (json.dumps(body).encode() if ctype == "application/json" else body)
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")

    def route(self, method):
        raw = self.body()
        path = urllib.parse.urlparse(self.path).path
        with LOCK:
            if not path.startswith("/_control"):
                STATE["requests"].append([method, path])
                STATE["last_headers"] = {k.lower(): v for k, v in self.headers.items()}
            down = STATE["down"]
        if path == "/_control/stats":
            with LOCK:
                return self.send(200, {k: STATE[k] for k in ("tokens_issued", "jobs_submitted", "requests", "last_headers")})
        if path == "/_control" and method == "POST":
            ctl = json.loads(raw or b"{}")
            with LOCK:
                if ctl.get("revoke_tokens"):
                    STATE["tokens"].clear()
                for k in ("next_job", "down"):
                    if k in ctl:
                        STATE[k] = ctl[k]
                for k in ("queue_ms", "run_ms", "token_ttl_s"):
                    if k in ctl:
                        setattr(ARGS, k, ctl[k])
            return self.send(204)
        if down:
            return self.send(503, error_body(503, "Service Unavailable", "service_unavailable"))
        if path == "/identity/token" and method == "POST":
            return self.token(raw)
        if not path.startswith("/api/v1/"):
            return self.send(404, error_body(404, "Not Found", "not_found"))
        auth = self.headers.get("Authorization", "")
        with LOCK:
            exp = STATE["tokens"].get(auth[7:]) if auth.startswith("Bearer ") else None
        if exp is None or exp < time.time():
            return self.send(401, error_body(401, "Unauthorized: the bearer token is missing, expired or invalid",
                                             "not_authorized"))
        if self.headers.get("Service-CRN") != ARGS.crn:
            return self.send(403, error_body(403, "Forbidden: the Service-CRN does not name an instance you can use",
                                             "forbidden"))
        rest = path[len("/api/v1/"):].strip("/").split("/")
        if rest[0] == "backends" and len(rest) == 3 and method == "GET":
            if rest[1] != ARGS.backend:
                return self.send(404, error_body(404, "Backend %s not found" % rest[1], "not_found"))
            if rest[2] == "configuration":
                return self.send(200, backend_configuration())
            if rest[2] == "status":
                with LOCK:
                    pending = sum(1 for j in STATE["jobs"].values() if job_status(j, time.time()) in ("Queued", "Running"))
                return self.send(200, {"backend_name": ARGS.backend, "backend_version": "1.3.7", "state": True,
                                       "status": "active", "message": "", "length_queue": pending})
        if rest == ["jobs"] and method == "POST":
            return self.submit(raw)
        if rest[0] == "jobs" and len(rest) >= 2:
            with LOCK:
                job = STATE["jobs"].get(rest[1])
                if job is None:
                    return self.send(404, error_body(404, "Job not found", "not_found"))
                now = time.time()
                if len(rest) == 2 and method == "GET":
                    return self.send(200, job_json(job, now))
                if len(rest) == 2 and method == "DELETE":
                    del STATE["jobs"][rest[1]]
                    return self.send(204)
                if rest[2:] == ["results"] and method == "GET":
                    if job_status(job, now) != "Completed":
                        return self.send(400, error_body(400, "Job %s has no results: it is %s" % (job["id"], job_status(job, now))))
                    return self.send(200, job["results"])
                if rest[2:] == ["cancel"] and method == "POST":
                    if job_status(job, now) not in ("Queued", "Running"):
                        return self.send(409, error_body(409, "Job %s is in a final state and cannot be cancelled" % job["id"], "conflict"))
                    job["final"] = "Cancelled"
                    job["ended"] = now
                    return self.send(204)
        return self.send(404, error_body(404, "Not Found", "not_found"))

    def token(self, raw):
        form = urllib.parse.parse_qs(raw.decode())
        if self.headers.get("Content-Type", "").split(";")[0] != "application/x-www-form-urlencoded" or \
                form.get("grant_type") != ["urn:ibm:params:oauth:grant-type:apikey"]:
            return self.send(400, {"errorCode": "BXNIM0109E", "errorMessage": "Property missing or empty.",
                                   "context": {"requestId": secrets.token_hex(8)}})
        if form.get("apikey") != [ARGS.api_key]:
            return self.send(400, {"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be found.",
                                   "context": {"requestId": secrets.token_hex(8)}})
        tok = "eyJ" + secrets.token_urlsafe(48)
        now = time.time()
        with LOCK:
            STATE["tokens"][tok] = now + ARGS.token_ttl_s
            STATE["tokens_issued"] += 1
        self.send(200, {"access_token": tok, "refresh_token": "not_supported", "ims_user_id": 1234567,
                        "token_type": "Bearer", "expires_in": ARGS.token_ttl_s,
                        "expiration": int(now + ARGS.token_ttl_s), "scope": "ibm openid"})

    def submit(self, raw):
        try:
            req = json.loads(raw)
        except ValueError:
            return self.send(400, error_body(400, "Request body is not valid JSON"))
        if req.get("program_id") != "sampler":
            return self.send(400, error_body(400, "program_id must be sampler or estimator"))
        if req.get("backend") != ARGS.backend:
            return self.send(404, error_body(404, "Backend %s not found" % req.get("backend"), "not_found"))
        params = req.get("params") or {}
        pubs = params.get("pubs")
        if not isinstance(pubs, list) or not pubs:
            return self.send(400, error_body(400, "params.pubs must be a non-empty list"))
        results, error = [], None
        for pub in pubs:
            if isinstance(pub, dict):
                circuit, shots = pub.get("circuit"), pub.get("shots")
            else:
                circuit, shots = pub[0], pub[2] if len(pub) > 2 else None
            shots = shots or params.get("shots") or 4096
            if not isinstance(circuit, str) or not circuit.lstrip().startswith("OPENQASM 3"):
                return self.send(400, error_body(400, "each PUB needs an OpenQASM 3 circuit"))
            try:
                samples, sizes = run_circuit(circuit, int(shots), ARGS.basis, ARGS.coupling)
                data = {c: {"samples": [hex(v) for v in samples[c]], "num_bits": sizes[c]} for c in sizes}
                results.append({"data": data, "metadata": {"circuit_metadata": {}}})
            except ValueError as e:
                error = str(e)
        with LOCK:
            fate, STATE["next_job"] = STATE["next_job"], None
            jid = "d" + secrets.token_hex(10)[:19]
            STATE["jobs"][jid] = {"id": jid, "backend": ARGS.backend, "created": time.time(), "final": None,
                                  "queue_ms": ARGS.queue_ms, "run_ms": ARGS.run_ms, "fate": fate, "error": error,
                                  "tags": req.get("tags") or [],
                                  "results": {"results": results, "metadata": {"execution": {"execution_spans": {}},
                                                                               "version": 2}}}
            STATE["jobs_submitted"] += 1
            if fate == "lost":
                del STATE["jobs"][jid]
        self.send(200, {"id": jid, "backend": ARGS.backend})


def backend_configuration():
    return {"backend_name": ARGS.backend, "backend_version": "1.3.7", "n_qubits": ARGS.qubits,
            "basis_gates": ARGS.basis, "coupling_map": ARGS.coupling, "simulator": False, "local": False,
            "conditional": False, "open_pulse": False, "memory": True, "max_shots": 100000,
            "max_experiments": 300, "supported_instructions": ARGS.basis + ["measure", "delay", "reset"],
            "processor_type": {"family": "Eagle", "revision": 3}, "online_date": "2022-08-01T04:00:00Z"}


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--port-file", required=True)
    p.add_argument("--api-key", default="test-api-key")
    p.add_argument("--crn", default="crn:v1:bluemix:public:quantum-computing:us-east:a/0123:4567::")
    p.add_argument("--backend", default="ibm_test")
    p.add_argument("--basis", default="ecr,id,rz,sx,x")
    p.add_argument("--coupling", default="0-1,1-2,2-3,3-4")
    p.add_argument("--qubits", type=int, default=5)
    p.add_argument("--queue-ms", type=int, default=300)
    p.add_argument("--run-ms", type=int, default=300)
    p.add_argument("--token-ttl-s", type=int, default=3600)
    p.add_argument("--seed", type=int, default=7)
    ARGS = p.parse_args()
    ARGS.basis = ARGS.basis.split(",")
    ARGS.coupling = [[int(x) for x in e.split("-")] for e in ARGS.coupling.split(",") if e]
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    with open(ARGS.port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.replace(ARGS.port_file + ".tmp", ARGS.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
