#!/usr/bin/env python3
"""Fails when a Catch2 TEST_CASE name holds a semicolon.

CTest keeps test names in CMake lists, which split on ';': such a test is registered as two
tests that both fail ("No test cases matched"), and only a full CTest run shows it.
"""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent / "tests"
pattern = re.compile(r'TEST_CASE\(\s*"((?:[^"\\]|\\.)*)"')
bad = []
for path in sorted(root.rglob("*.cpp")):
    if "node_modules" in path.parts:
        continue
    text = path.read_text(errors="replace")
    for m in pattern.finditer(text):
        if ";" in m.group(1):
            line = text.count("\n", 0, m.start()) + 1
            bad.append(f"{path.relative_to(root.parent)}:{line}: {m.group(1)}")
for b in bad:
    print(b)
if bad:
    print(f"{len(bad)} test name(s) with ';' — CTest would split them; use ',' instead", file=sys.stderr)
sys.exit(1 if bad else 0)
