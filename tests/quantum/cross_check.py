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

Usage: cross_check.py QSIM   (QSIM: the scigate_qsim executable)
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
            ops.append(("measure", q, q))
            if rng.random() < 0.3:
                r = rng.randrange(n)
                lines.append("reset q[%d];" % r)
                ops.append(("reset", r))
            if rng.random() < 0.5:
                cond = rng.randrange(1 << min(n, 3))
        text = name + ("(" + ",".join(repr(p) for p in ps) + ")" if ps else "") + " " + ",".join("q[%d]" % q for q in qs) + ";"
        if cond is not None:
            text = "if(c==%d) " % cond + text
        lines.append(text)
        ops.append(("gate", name, ps, qs, cond))
    lines.append("measure q -> c;")
    return "\n".join(lines) + "\n", ops


def final_state(n, ops):
    psi = np.zeros((2,) * n, dtype=complex)
    psi[(0,) * n] = 1
    for op in ops:
        _, name, ps, qs, _ = op
        psi = apply(psi, n, GATES[name][2](*ps), qs)
    return psi


def exact_distribution(n, ops):
    """Outcome probabilities of the classical register, following every measurement branch."""
    psi0 = np.zeros((2,) * n, dtype=complex)
    psi0[(0,) * n] = 1
    branches = [(1.0, psi0, 0)]  # probability, normalised state, register value
    for op in ops + [("measure_all",)]:
        nxt = []
        for prob, psi, creg in branches:
            if op[0] == "gate":
                _, name, ps, qs, cond = op
                if cond is None or creg == cond:
                    psi = apply(psi, n, GATES[name][2](*ps), qs)
                nxt.append((prob, psi, creg))
            elif op[0] in ("measure", "reset"):
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
                    c = creg
                    if op[0] == "measure":
                        c = (creg & ~(1 << op[2])) | (outcome << op[2])
                    nxt.append((prob * p, keep, c))
            else:  # the terminal measure q -> c
                flat = psi.reshape(-1)
                for i, a in enumerate(flat):
                    p = abs(a) ** 2
                    if p > 1e-15:
                        nxt.append((prob * p, None, i))
        branches = nxt
    dist = {}
    for prob, _, creg in branches:
        key = format(creg, "0%db" % n)
        dist[key] = dist.get(key, 0.0) + prob
    return dist


def chi2_critical(dof, alpha=1e-4):
    # Wilson-Hilferty: chi2_dof quantile from the normal quantile (z for 1 - 1e-4 = 3.719)
    z = 3.719
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    qsim = sys.argv[1]
    rng = random.Random(20261122)
    failures = 0
    checked_amp = checked_chi = 0
    worst = 0.0
    cases = [(n, False) for n in list(range(1, 15)) + [14, 14, 12, 10]] + [(n, True) for n in (2, 3, 4, 5, 6, 7)]
    for idx, (n, mid) in enumerate(cases):
        gates = 12 * n if not mid else 6 * n
        src, ops = random_circuit(rng, n, gates, mid)
        with tempfile.NamedTemporaryFile("w", suffix=".qasm", delete=False) as f:
            f.write(src)
            path = f.name
        shots = 20000 if mid else 0
        out = subprocess.run([qsim, path, "--shots", str(shots), "--seed", str(idx)] + ([] if mid else ["--statevector"]),
                             capture_output=True, text=True)
        if out.returncode != 0:
            print("case %d (%d qubits): qsim failed: %s" % (idx, n, out.stderr.strip()))
            failures += 1
            continue
        got = json.loads(out.stdout)
        if not mid:
            want = final_state(n, [o for o in ops if o[0] == "gate"]).reshape(-1)
            sv = np.array([complex(re, im) for re, im in got["statevector"]])
            diff = float(np.max(np.abs(sv - want)))
            worst = max(worst, diff)
            checked_amp += 1
            if diff > 1e-9:
                print("case %d (%d qubits, %d gates): amplitudes differ by %.3g" % (idx, n, gates, diff))
                failures += 1
        else:
            dist = exact_distribution(n, ops)
            counts = got["counts"]
            extra = [k for k in counts if k not in dist]
            if extra:
                print("case %d: impossible outcomes sampled: %s" % (idx, extra[:5]))
                failures += 1
                continue
            # Pool outcomes expected fewer than 5 times into one cell.
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
            crit = chi2_critical(dof)
            checked_chi += 1
            if stat > crit:
                print("case %d (%d qubits): chi-square %.1f above %.1f (dof %d)" % (idx, n, stat, crit, dof))
                failures += 1
    print("checked %d circuits by amplitude (largest difference %.2e) and %d by chi-square; %d failed"
          % (checked_amp, worst, checked_chi, failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
