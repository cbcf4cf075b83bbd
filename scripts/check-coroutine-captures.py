#!/usr/bin/env python3
"""Finds lambdas with by-value captures written inside a co_await expression.

GCC 12 (Debian 12's compiler) destroys such a closure twice, and its captures with it: a
captured shared_ptr or executor loses a reference it never had (a strand freed under live
timers), a captured string is freed twice. Clang does not, so the ASan stage (clang) cannot see
it. Name the closure first and pass it in (`auto work = [x] {...}; co_await f(std::move(work));`),
which GCC compiles correctly. tests/unit/jobs/local_scheduler_test.cpp shows the failure mode.

    check-coroutine-captures.py [FILE...]   (default: every C++ file of the repository)

Prints file:line for each and exits 1 if there is any.
"""
import pathlib
import re
import sys

LAMBDA = re.compile(r"\[([^\[\]]*)\]\s*(\(|\{|mutable\b|->)")


def strip(src: str) -> str:
    """Blanks comments and string literals, keeping offsets (and so line numbers)."""
    blank = lambda m: re.sub(r"[^\n]", " ", m.group())
    src = re.sub(r"/\*.*?\*/", blank, src, flags=re.S)
    src = re.sub(r"//[^\n]*", blank, src)
    return re.sub(r'"(\\.|[^"\\\n])*"', lambda m: '"' + " " * (len(m.group()) - 2) + '"', src)


def await_expression(code: str, start: int) -> str:
    """From `start` to the end of the statement holding the co_await (or of the enclosing
    parenthesis): all of it is one full-expression, whose temporaries live across the suspension."""
    depth, i = 0, start
    while i < len(code):
        c = code[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                break
        elif c == ";" and depth == 0:
            break
        i += 1
    return code[start:i]


def outermost_lambdas(expr: str):
    """Capture lists of the lambdas written directly in `expr` (not inside another's body)."""
    i = 0
    while True:
        m = LAMBDA.search(expr, i)
        if not m:
            return
        yield m.group(1)
        # Skip the lambda's body: from its first '{' to the matching '}'.
        j = expr.find("{", m.end() - 1)
        if j < 0:
            return
        depth = 0
        while j < len(expr):
            depth += expr[j] == "{"
            depth -= expr[j] == "}"
            j += 1
            if depth == 0:
                break
        i = j


def check(path: pathlib.Path):
    code = strip(path.read_text(encoding="utf-8", errors="replace"))
    for m in re.finditer(r"\bco_await\b", code):
        for captures in outermost_lambdas(await_expression(code, m.end())):
            names = [c.strip() for c in captures.split(",") if c.strip()]
            by_value = [c for c in names if c not in ("&", "this") and not c.startswith("&")]
            if by_value:
                line = code.count("\n", 0, m.start()) + 1
                yield f"{path}:{line}: lambda capturing {', '.join(by_value)} by value inside a co_await expression"


def main(argv):
    files = argv[1:]
    if not files:
        root = pathlib.Path(__file__).resolve().parent.parent
        skip = ("build", ".", "node_modules")  # build trees, .git, the npm clients
        files = [str(p) for ext in ("*.cpp", "*.hpp") for p in root.rglob(ext)
                 if not any(part.startswith(skip) for part in p.relative_to(root).parts[:-1])]
        if not files:
            print(f"no C++ sources under {root}", file=sys.stderr)
            return 2
    found = [hit for f in files for hit in check(pathlib.Path(f))]
    for hit in found:
        print(hit)
    if found:
        print(f"{len(found)} lambda(s) to name before the co_await (GCC 12 destroys them twice)", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
