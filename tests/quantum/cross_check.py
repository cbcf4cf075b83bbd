#!/usr/bin/env python3
"""Cross-checks scigate's state-vector simulator against an independent one written here.

The reference is deliberately naive and shares no code with the C++ simulator: gate matrices
are written from their textbook definitions, every gate is applied to the whole state with
numpy.tensordot, and mid-circuit measurements are followed exactly by branching on both
outcomes. A corpus of random OpenQASM 2 circuits (up to 14 qubits, every standard gate) is
generated from a fixed seed; for each circuit:
  - without mid-circuit measurement: all amplitudes must agree to 1e-9;
  - with measurement, reset and conditions mid-circuit: the simulator's sampled counts must
    pass a chi-square goodness-of-fit test against the exact outcome distribution.
The official OpenQASM 2 examples are read by a small reader of the reference's own and checked
the same way (counts always, amplitudes too when every measurement is terminal).

Usage: cross_check.py QSIM [EXAMPLES]   (QSIM: the scigate_qsim executable; EXAMPLES: a
folder of OpenQASM 2 programs, read by the reference's own reader, such as tests/data/qasm)
Exit code 77 (skipped) when numpy is missing.
"""
import json
import math
import random
import subprocess
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    print("SKIPPED: python3-numpy is not installed (apt-get install python3-numpy, or scripts/install-deps.sh --test)")
    sys.exit(77)

I = 1j
H = np.array([[1, 1], [1, -1]]) / math.sqrt(2)
X = np.array([[0, 1], [1, 0]], dtype=complex)
Y = np.array([[0, -I], [I, 0]])
Z = np.diag([1, -1]).astype(complex)
SX = 0.5 * np.array([[1 + I, 1 - I], [1 - I, 1 + I]])


def P(l):
    return np.diag([1, np.exp(I * l)])


def U(t, p, l):
    return np.array([[math.cos(t / 2), -np.exp(I * l) * math.sin(t / 2)],
                     [np.exp(I * p) * math.sin(t / 2), np.exp(I * (p + l)) * math.cos(t / 2)]])


def RX(t):
    return math.cos(t / 2) * np.eye(2) - I * math.sin(t / 2) * X


def RY(t):
    return math.cos(t / 2) * np.eye(2) - I * math.sin(t / 2) * Y


def RZ(t):
    return math.cos(t / 2) * np.eye(2) - I * math.sin(t / 2) * Z


def kron_le(*ms):
    """Tensor product with the first factor on the lowest index bit (qubit order of the call)."""
    out = np.array([[1]], dtype=complex)
    for m in ms:
        out = np.kron(m, out)
    return out


def controlled(u, nc):
    """Controls are the first nc qubits of the call (lowest bits)."""
    d = u.shape[0] << nc
    m = np.eye(d, dtype=complex)
    cm = (1 << nc) - 1
    for r in range(d):
        for c in range(d):
            if r & cm == cm and c & cm == cm:
                m[r, c] = u[r >> nc, c >> nc]
    return m


SWAP = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=complex)

# name: (params, qubits, matrix over the call's qubits, first = lowest bit)
GATES = {
    "id": (0, 1, lambda: np.eye(2)), "x": (0, 1, lambda: X), "y": (0, 1, lambda: Y), "z": (0, 1, lambda: Z),
    "h": (0, 1, lambda: H), "s": (0, 1, lambda: P(math.pi / 2)), "sdg": (0, 1, lambda: P(-math.pi / 2)),
    "t": (0, 1, lambda: P(math.pi / 4)), "tdg": (0, 1, lambda: P(-math.pi / 4)), "sx": (0, 1, lambda: SX),
    "sxdg": (0, 1, lambda: SX.conj().T), "rx": (1, 1, RX), "ry": (1, 1, RY), "rz": (1, 1, RZ), "p": (1, 1, P),
    "u1": (1, 1, P), "u2": (2, 1, lambda p, l: U(math.pi / 2, p, l)), "u3": (3, 1, U), "u": (3, 1, U),
    "cx": (0, 2, lambda: controlled(X, 1)), "cy": (0, 2, lambda: controlled(Y, 1)), "cz": (0, 2, lambda: controlled(Z, 1)),
    "ch": (0, 2, lambda: controlled(H, 1)), "csx": (0, 2, lambda: controlled(SX, 1)),
    "crx": (1, 2, lambda t: controlled(RX(t), 1)), "cry": (1, 2, lambda t: controlled(RY(t), 1)),
    "crz": (1, 2, lambda t: controlled(RZ(t), 1)), "cp": (1, 2, lambda l: controlled(P(l), 1)),
    "cu1": (1, 2, lambda l: controlled(P(l), 1)), "cu3": (3, 2, lambda t, p, l: controlled(U(t, p, l), 1)),
    "cu": (4, 2, lambda t, p, l, g: controlled(np.exp(I * g) * U(t, p, l), 1)),
    "swap": (0, 2, lambda: SWAP),
    "rxx": (1, 2, lambda t: math.cos(t / 2) * np.eye(4) - I * math.sin(t / 2) * kron_le(X, X)),
    "ryy": (1, 2, lambda t: math.cos(t / 2) * np.eye(4) - I * math.sin(t / 2) * kron_le(Y, Y)),
    "rzz": (1, 2, lambda t: math.cos(t / 2) * np.eye(4) - I * math.sin(t / 2) * kron_le(Z, Z)),
    "ecr": (0, 2, lambda: (kron_le(X, np.eye(2)) - kron_le(Y, X)) / math.sqrt(2)),
    "ccx": (0, 3, lambda: controlled(X, 2)), "cswap": (0, 3, lambda: controlled(SWAP, 1)),
    "c3x": (0, 4, lambda: controlled(X, 3)), "c3sqrtx": (0, 4, lambda: controlled(SX, 3)),
    "c4x": (0, 5, lambda: controlled(X, 4)),
}


def apply(psi, n, m, qubits):
    """psi: shape (2,)*n, axis a <-> qubit n-1-a. m acts on qubits, qubits[0] = lowest bit."""
    k = len(qubits)
    t = m.reshape((2,) * (2 * k))  # row axes then column axes, most significant (qubits[k-1]) first
    axes = [n - 1 - q for q in reversed(qubits)]
    out = np.tensordot(t, psi, axes=(list(range(k, 2 * k)), axes))
    return np.moveaxis(out, list(range(k)), axes)


# --- corpus ----------------------------------------------------------------------------------

def random_circuit(rng, n, gates, mid):
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', "qreg q[%d];" % n, "creg c[%d];" % n]
    ops = []  # (kind, name, params, qubits, condition)
    names = [g for g, (p, k, f) in GATES.items() if k <= n]
    for i in range(gates):
        name = rng.choice(names)
        np_, k, _ = GATES[name]
        qs = rng.sample(range(n), k)
        ps = [round(rng.uniform(-math.pi, math.pi), 6) for _ in range(np_)]
        cond = None
        if mid and rng.random() < 0.08:
            q = rng.randrange(n)
            lines.append("measure q[%d] -> c[%d];" % (q, q))
            ops.append(("measure", q, q, None))
            if rng.random() < 0.3:
                r = rng.randrange(n)
                lines.append("reset q[%d];" % r)
                ops.append(("reset", r, None))
            if rng.random() < 0.5:
                cond = rng.randrange(1 << min(n, 3))
        text = name + ("(" + ",".join(repr(p) for p in ps) + ")" if ps else "") + " " + ",".join("q[%d]" % q for q in qs) + ";"
        if cond is not None:
            text = "if(c==%d) " % cond + text
        lines.append(text)
        ops.append(("gate", name, ps, qs, None if cond is None else (list(range(n)), cond)))
    lines.append("measure q -> c;")
    ops += [("measure", q, q, None) for q in range(n)]
    return "\n".join(lines) + "\n", ops


def final_state(n, ops):
    psi = np.zeros((2,) * n, dtype=complex)
    psi[(0,) * n] = 1
    for op in ops:
        _, name, ps, qs, _ = op
        psi = apply(psi, n, GATES[name][2](*ps), qs)
    return psi


def exact_distribution(n, ops, num_clbits, key):
    """Outcome probabilities of the classical bits, following every mid-circuit measurement
    branch; measurements after the last gate, reset or condition are read off |psi|^2."""
    tail = len(ops)
    while tail > 0 and ops[tail - 1][0] == "measure" and ops[tail - 1][3] is None:
        tail -= 1
    psi0 = np.zeros((2,) * n, dtype=complex)
    psi0[(0,) * n] = 1
    branches = [(1.0, psi0, (0,) * num_clbits)]

    def holds(cond, bits):
        if cond is None:
            return True
        clbits, value = cond
        return sum(bits[c] << i for i, c in enumerate(clbits)) == value

    for op in ops[:tail]:
        nxt = []
        for prob, psi, bits in branches:
            if not holds(op[-1], bits):
                nxt.append((prob, psi, bits))
                continue
            if op[0] == "gate":
                _, name, ps, qs, _ = op
                nxt.append((prob, apply(psi, n, GATES[name][2](*ps), qs), bits))
                continue
            q = op[1]
            axis = n - 1 - q
            for outcome in (0, 1):
                part = np.take(psi, [outcome], axis=axis)
                p = float(np.sum(np.abs(part) ** 2))
                if p < 1e-15:
                    continue
                keep = np.zeros_like(psi)
                idx = [slice(None)] * n
                idx[axis] = 0 if op[0] == "reset" else outcome
                keep[tuple(idx)] = np.squeeze(part, axis=axis) / math.sqrt(p)
                b = bits
                if op[0] == "measure":
                    b = bits[:op[2]] + (outcome,) + bits[op[2] + 1:]
                nxt.append((prob * p, keep, b))
        branches = nxt
    dist = {}
    final = ops[tail:]
    for prob, psi, bits in branches:
        flat = psi.reshape(-1)
        for i in np.nonzero(np.abs(flat) ** 2 > 1e-15)[0]:
            b = list(bits)
            for _, q, c, _ in final:
                b[c] = (int(i) >> q) & 1
            k = key(b)
            dist[k] = dist.get(k, 0.0) + prob * float(abs(flat[i]) ** 2)
    return dist


# --- an OpenQASM 2 reader for the official examples --------------------------------------------

def read_qasm2(text):
    """Flattens an OpenQASM 2 program (gate definitions, broadcast, if) into reference ops."""
    import re
    text = re.sub(r"//[^\n]*", "", text)
    qregs, cregs, defs = {}, {}, {}
    nq = nc = 0
    ops = []
    funcs = {"pi": math.pi, "sin": math.sin, "cos": math.cos, "tan": math.tan, "exp": math.exp,
             "ln": math.log, "sqrt": math.sqrt}

    def value(expr, env):
        return float(eval(expr.replace("^", "**"), {"__builtins__": {}}, dict(funcs, **env)))

    def split_args(s):
        out, depth, cur = [], 0, ""
        for ch in s:
            if ch == "," and depth == 0:
                out.append(cur.strip())
                cur = ""
                continue
            depth += ch == "("
            depth -= ch == ")"
            cur += ch
        if cur.strip():
            out.append(cur.strip())
        return out

    def expand(name, params, qubits, cond):
        if name in ("U", "CX"):
            name = {"U": "u3", "CX": "cx"}[name]
        if name in defs:
            pnames, qnames, body = defs[name]
            env = dict(zip(pnames, params))
            for stmt in body:
                m = re.match(r"(\w+)\s*(?:\((.*)\))?\s*(.*)$", stmt, re.S)
                if m.group(1) == "barrier":
                    continue
                ps = [value(e, env) for e in split_args(m.group(2) or "")]
                qs = [qubits[qnames.index(a.strip())] for a in m.group(3).split(",")]
                expand(m.group(1), ps, qs, cond)
            return
        ops.append(("gate", name, params, qubits, cond))

    def operand(a, regs):
        m = re.match(r"(\w+)\s*(?:\[\s*(\d+)\s*\])?$", a.strip())
        off, size = regs[m.group(1)]
        return [off + int(m.group(2))] if m.group(2) is not None else list(range(off, off + size))

    def statement(stmt, cond=None):
        m = re.match(r"if\s*\(\s*(\w+)\s*==\s*(\d+)\s*\)\s*(.*)$", stmt, re.S)
        if m:
            off, size = cregs[m.group(1)]
            return statement(m.group(3), (list(range(off, off + size)), int(m.group(2))))
        m = re.match(r"measure\s+(.*?)\s*->\s*(.*)$", stmt, re.S)
        if m:
            for q, c in zip(operand(m.group(1), qregs), operand(m.group(2), cregs)):
                ops.append(("measure", q, c, cond))
            return
        m = re.match(r"reset\s+(.*)$", stmt, re.S)
        if m:
            for q in operand(m.group(1), qregs):
                ops.append(("reset", q, cond))
            return
        if stmt.startswith("barrier"):
            return
        m = re.match(r"(\w+)\s*(?:\((.*?)\))?\s+(.*)$", stmt, re.S)
        ps = [value(e, {}) for e in split_args(m.group(2) or "")]
        args = [operand(a, qregs) for a in split_args(m.group(3))]
        width = max(len(a) for a in args)
        for k in range(width):
            expand(m.group(1), ps, [a[k] if len(a) > 1 else a[0] for a in args], cond)

    pos = 0
    while True:
        m = re.compile(r"\s*(gate|opaque)\s+(\w+)\s*(?:\((.*?)\))?\s*([^{;]*)(\{(.*?)\}|;)", re.S).search(text, pos)
        head = text[pos:m.start()] if m else text[pos:]
        for stmt in head.split(";"):
            stmt = " ".join(stmt.split())
            if not stmt or stmt.startswith("OPENQASM") or stmt.startswith("include"):
                continue
            d = re.match(r"(qreg|creg)\s+(\w+)\s*\[\s*(\d+)\s*\]$", stmt)
            if d:
                if d.group(1) == "qreg":
                    qregs[d.group(2)] = (nq, int(d.group(3)))
                    nq += int(d.group(3))
                else:
                    cregs[d.group(2)] = (nc, int(d.group(3)))
                    nc += int(d.group(3))
                continue
            statement(stmt)
        if not m:
            break
        if m.group(1) == "gate":
            pnames = [p.strip() for p in (m.group(3) or "").split(",") if p.strip()]
            qnames = [q.strip() for q in m.group(4).split(",")]
            body = [" ".join(b.split()) for b in (m.group(6) or "").split(";") if b.strip()]
            defs[m.group(2)] = (pnames, qnames, body)
        pos = m.end()

    order = sorted(cregs.values())

    def key(bits):
        return " ".join("".join(str(bits[off + i]) for i in reversed(range(size))) for off, size in reversed(order))

    return nq, nc, ops, key


def chi2_critical(dof, alpha=1e-4):
    # Wilson-Hilferty: chi2_dof quantile from the normal quantile (z for 1 - 1e-4 = 3.719)
    z = 3.719
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def chi_square(dist, counts, shots):
    """(statistic, critical value, dof), pooling outcomes expected fewer than 5 times; None when
    an impossible outcome was sampled."""
    if any(k not in dist for k in counts):
        return None
    stat, cells, small_o, small_e = 0.0, 0, 0, 0.0
    for k, p in dist.items():
        e, o = p * shots, counts.get(k, 0)
        if e < 5:
            small_o += o
            small_e += e
            continue
        stat += (o - e) ** 2 / e
        cells += 1
    if small_e > 0:
        stat += (small_o - small_e) ** 2 / max(small_e, 1e-9)
        cells += 1
    dof = max(cells - 1, 1)
    return stat, chi2_critical(dof), dof


def run_qsim(qsim, src, shots, seed, statevector, fusion=True):
    with tempfile.NamedTemporaryFile("w", suffix=".qasm", delete=False) as f:
        f.write(src)
        path = f.name
    out = subprocess.run([qsim, path, "--shots", str(shots), "--seed", str(seed)] + (["--statevector"] if statevector else []) +
                         ([] if fusion else ["--no-fusion"]),
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip()
    return json.loads(out.stdout), None


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__)
        return 2
    qsim = sys.argv[1]
    examples = sys.argv[2] if len(sys.argv) == 3 else None
    rng = random.Random(20261122)
    failures = 0
    checked_amp = checked_chi = 0
    worst = 0.0
    shots = 20000

    def check_counts(label, dist, counts):
        nonlocal failures, checked_chi
        r = chi_square(dist, counts, shots)
        checked_chi += 1
        if r is None:
            print("%s: impossible outcomes sampled: %s" % (label, [k for k in counts if k not in dist][:5]))
            failures += 1
        elif r[0] > r[1]:
            print("%s: chi-square %.1f above %.1f (dof %d)" % (label, r[0], r[1], r[2]))
            failures += 1

    def check_amplitudes(label, want, got):
        nonlocal failures, checked_amp, worst
        sv = np.array([complex(re, im) for re, im in got])
        diff = float(np.max(np.abs(sv - want)))
        worst = max(worst, diff)
        checked_amp += 1
        if diff > 1e-9:
            print("%s: amplitudes differ by %.3g" % (label, diff))
            failures += 1

    # Random circuits over every standard gate, 1 to 14 qubits.
    cases = [(n, False) for n in list(range(1, 15)) + [14, 14, 12, 10]] + [(n, True) for n in (2, 3, 4, 5, 6, 7)]
    for idx, (n, mid) in enumerate(cases):
        gates = 12 * n if not mid else 6 * n
        src, ops = random_circuit(rng, n, gates, mid)
        # Every other case unfused, so that both the fused blocks and the per-gate kernels are checked.
        fusion = idx % 2 == 0
        label = "random case %d (%d qubits, %d gates%s%s)" % (idx, n, gates, ", mid-circuit measurement" if mid else "",
                                                            "" if fusion else ", unfused")
        got, err = run_qsim(qsim, src, shots if mid else 0, idx, not mid, fusion)
        if err:
            print("%s: qsim failed: %s" % (label, err))
            failures += 1
            continue
        if not mid:
            check_amplitudes(label, final_state(n, [o for o in ops if o[0] == "gate"]).reshape(-1), got["statevector"])
        else:
            check_counts(label, exact_distribution(n, ops, n, lambda b: "".join(str(x) for x in reversed(b))), got["counts"])

    # The official OpenQASM 2 examples, read by the reference's own reader.
    if examples:
        import glob
        import os
        for path in sorted(glob.glob(os.path.join(examples, "*.qasm"))):
            name = os.path.basename(path)
            if name.startswith("invalid_"):
                continue
            src = open(path).read()
            nq, nc, ops, key = read_qasm2(src)
            first = next((i for i, o in enumerate(ops) if o[0] == "measure"), len(ops))
            terminal = all(o[0] == "gate" and o[-1] is None for o in ops[:first]) and \
                all(o[0] == "measure" and o[-1] is None for o in ops[first:])
            got, err = run_qsim(qsim, src, shots, 1, terminal)
            if err:
                print("%s: qsim failed: %s" % (name, err))
                failures += 1
                continue
            if terminal:
                check_amplitudes(name, final_state(nq, [o for o in ops if o[0] == "gate"]).reshape(-1), got["statevector"])
            check_counts(name, exact_distribution(nq, ops, nc, key), got["counts"])

    print("checked %d circuits by amplitude (largest difference %.2e) and %d by chi-square; %d failed"
          % (checked_amp, worst, checked_chi, failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
