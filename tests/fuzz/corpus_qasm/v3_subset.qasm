OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
bit[3] c;
gate rot(θ, φ) a, b { rz(θ) a; cx a, b; ry(φ / 2) b; }
h q[0];
rot(pi/4, -1e-3) q[0], q[1];
c[0] = measure q[0];
if (c[0]) { x q[2]; }
if (c == 1) z q[1];
reset q[0];
barrier q;
c = measure q;
