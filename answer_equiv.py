"""Answer equivalence: `is_equiv(pred, gold)` and `validate_gold(gold)`, in two stages.

1. In process, no sympy (decides nearly every case in ~0.1 ms): normalise both strings (\\left/\\right,
   \\dfrac, spacing, $, \\%, degrees, \\text{} and trailing units, thousands separators `10,\\!080`,
   choice letters `(C)`), split the structure (tuples and intervals: order and bracket types matter;
   sets `\\{\\}`, bare comma lists, unions and `\\pm`: order does not; pmatrix/bmatrix; equations `x = 3`
   vs `3`), then parse and evaluate each atom with latex_expr.py (exact rationals, else complex floats).
   Words (>= 3 letters, or a whole \\text{}) compare as case-insensitive strings; unparseable atoms as strings.
2. sympy, only for pairs stage 1 cannot evaluate (float overflow, division by zero, infinities):
   simplify(pred - gold) == 0 on sympy trees built from the same parse (sympy never parses text), in a
   child process `python reward.py --serve sympy` that is killed and restarted when it exceeds the
   timeout (SIGALRM cannot interrupt a C-level bignum power). Numbers that would exceed 10^6 bits
   (9^{9^{9^9}}, 1000000!) are judged unequal before sympy sees them. Timeouts are counted in STATS.
Deviations, deliberate: answers longer than 1000 characters are compared as exact strings only; 90^\\circ
is 90, not pi/2; 62.5% is 62.5 (not 0.625); an interval's infinite end is open whatever its bracket
([-\\infty, 0] = (-\\infty, 0], as math-verify); `52` matches a base-subscripted gold `52_8`; equations
with different left sides are equal when lhs - rhs are proportional; with multiple_answers (OlympiadBench)
commas always separate answers (`1,250` is two answers). Expression rules and tolerances: latex_expr.py.
"""
import atexit
import functools
import importlib.util
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

from latex_expr import _INT, _Undecided, _equation, _linear, _log2_bound, _parse, _sympy_equal, _values_equal

MAX_ANSWER_CHARS = 1000  # longer answers: exact string comparison only (bounds every regex and the parser)
MAX_SYMPY_BITS = 1e6     # numbers bigger than this are never built by sympy: judged unequal
STARTUP_TIMEOUT = 60.0   # seconds a child process may take to start (not counted in a comparison)
STATS = {"sympy_calls": 0, "math_verify_calls": 0, "timeouts": 0, "refused": 0, "child_failures": 0}  # counters
_REWARD_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reward.py")  # children run its --serve


# ----------------------------------------------------------------------------- normalisation

_UNICODE = str.maketrans({"−": "-", "–": "-", "×": "\\times ", "÷": "\\div ", "·": "\\cdot ", "π": "\\pi ",
                          "√": "\\sqrt", "∞": "\\infty ", "°": "^\\circ", "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne ",
                          "∪": "\\cup ", "∈": "\\in ", "\u2009": " ", "\u00a0": " ", "\n": " ", "\t": " "})
_SUBS = [(re.compile(p), r) for p, r in [
    (r"(?<!\\)\$", ""), (r"\\(?:left|right)\.|\\(?:left|right|[bB]igg?[lr]?|displaystyle)(?![a-zA-Z])", ""),
    (r"\\varnothing(?![a-zA-Z])|\\\{\s*\\\}", r"\\emptyset"),
    (r"\\q?quad(?![a-zA-Z])", ","), (r"\\[,;:! ]|~", " "), (r"\\[dtc]frac", r"\\frac"), (r"\{,\}", ","), (r";", ","),
    (r"\\(?:le|leqq|leqslant)(?![a-zA-Z])|<=|\u2a7d", r"\\leq"), (r"\\(?:ge|geqq|geqslant)(?![a-zA-Z])|>=|\u2a7e", r"\\geq"),
    (r"\\ne(?![a-zA-Z])|!=|\\not\s*=", r"\\neq"), (r"\\lt(?![a-zA-Z])", "<"), (r"\\gt(?![a-zA-Z])", ">"),
    (r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree", ""), (r"_\{(\w)\}", r"_\1"),
    (r",?\s*\\(?:text|textrm|textnormal|mbox|mathrm)\s*\{\s*,?\s*(?:or|and)\s*\}\s*,?", ","),
    (r"^(.*[^\s{_^])\s*\\(?:text|textnormal|textrm|mbox|mathrm)\s*\{\s*[a-zA-Z][a-zA-Z .]*\}\s*(?:\^\s*\{?\d\}?)?$",
     r"\1"),  # a trailing unit: "5 \text{ km}", "864 \mbox{ inches}^2"
    (r"\\(?:text|textbf|textit|textrm|textnormal|textsf|textup|mbox|mathrm|mathbf|mathit|mathsf|operatorname|"
     r"boldsymbol)\s*\{([^{}]*)\}", r"\1"),
    (r",?\s+(?:and|or)\s+", ","),  # "x = 1 or x = 2", "12, 31, and 40"
    (r"^([-+]?[\d.,]*\d|\\frac\{[^{}]*\}\{[^{}]*\})\s+(?:[a-zA-Z]{3,}|cm|mm|km|ft|in|kg|mi)(?:\s+[a-zA-Z]+)*"
     r"(?:\^\s*\{?\d\}?)?\s*$", r"\1"),  # bare unit words after a number: "18 dollars", "15 cm^2"
    (r"\\?[%$]", ""), (r"\\\{", "\x01"), (r"\\\}", "\x02"),
    (r"(\\[a-zA-Z]+) +(?=[a-zA-Z])", "\\1\x00"), (r" +", ""), (r"\x00", " "),  # keep `\pi r` apart
    (r"^[a-zA-Z]\\in", ""), (r"\.$", ""), (r"^\(([A-E])\)$", r"\1"), (r",,+", ","), (r"^,|,$", "")]]
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_LIST_COMMA = re.compile(r",\s+\d")  # "45, 123" is a list of two numbers, never 45123
_BOX_OPEN = re.compile(r"\$*\s*\\(?:boxed|fbox)\s*\{")


def _unbox(s: str) -> str:
    """The content of an answer that is wholly one \\boxed{...} / $\\boxed{...}$ (a gold written that way)."""
    while (m := _BOX_OPEN.match(s)) and (end := s.rstrip().rstrip("$").rstrip()).endswith("}"):
        depth, i = 0, m.end() - 1
        while i < len(end):
            if end[i] == "\\":
                i += 2
                continue
            depth += (end[i] == "{") - (end[i] == "}")
            if depth == 0:
                break
            i += 1
        if i != len(end) - 1:
            return s
        s = end[m.end():-1]
    return s


@functools.lru_cache(maxsize=1 << 14)  # answers repeat within a group
def _clean(s: str, multiple: bool = False) -> str:
    """Canonical string of an answer: formatting removed, structure and values untouched."""
    s = _unbox(s.translate(_UNICODE).strip()).replace("\\\\", "\x03")  # \x03: matrix row separator
    list_comma = multiple or bool(_LIST_COMMA.search(s))
    for pattern, repl in _SUBS:
        s = pattern.sub(repl, s)
    if not list_comma and _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return s


# ----------------------------------------------------------------------------- structure

_OPEN, _CLOSE = "([{\x01", ")]}\x02"
_ENV = r"(?:[pbvBV]?matrix|array)"
_MATRIX = re.compile(r"[\[(]?\\begin\{%s\}(?:\{[lcr|]*\})?(.*)\\end\{%s\}[\])]?" % (_ENV, _ENV))
_RELATIONS = ("\\leq", "\\geq", "\\neq", "<", ">")
_FLIP = {">": "<", "\\geq": "\\leq"}
_VARIABLE = re.compile(r"[a-zA-Z](?:_\w)?")


def _split_top(s: str, sep: str) -> list[str]:
    """Split at occurrences of sep outside any bracket."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s[i] in _OPEN:
            depth += 1
        elif s[i] in _CLOSE:
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
        i += 1
    return parts + [s[start:]]


def _wrapped(s: str) -> bool:
    """True when s[0] opens a bracket that s[-1] closes (the whole string is one bracketed group)."""
    if len(s) < 2 or s[0] not in _OPEN or s[-1] not in _CLOSE:
        return False
    depth = 0
    for i, c in enumerate(s):
        depth += (c in _OPEN) - (c in _CLOSE)
        if depth == 0:
            return i == len(s) - 1
    return False


def _items(parts: list[str]) -> list[tuple]:
    """Structures of list items, a `\\pm` item expanded into its two values."""
    out = []
    for p in parts:
        if len(_split_top(p, "\\pm")) == 2:
            a, b = _split_top(p, "\\pm")
            out += [_structure(f"{a}+{b}"), _structure(f"{a}-{b}")]
        else:
            out.append(_structure(p))
    return out


def _relation(s: str) -> tuple | None:
    """("rel", ops, sides) for `a < b \\leq c` (> and \\geq read right to left: `7 \\geq y` is `y \\leq 7`)."""
    sides, ops, depth, start, i = [], [], 0, 0, 0
    while i < len(s):
        depth += (s[i] in _OPEN) - (s[i] in _CLOSE)
        op = next((r for r in _RELATIONS if depth == 0 and s.startswith(r, i)), None)
        if op:
            sides.append(s[start:i].strip())
            ops.append(op)
            start = i = i + len(op)
        else:
            i += 1
    if not ops:
        return None
    sides.append(s[start:].strip())
    if all(op in _FLIP for op in ops):
        sides, ops = sides[::-1], [_FLIP[op] for op in ops[::-1]]
    return ("rel", tuple(ops), tuple(sides))


def _set_builder(inner: str) -> tuple | None:
    """("setb", variable, relation) for `x \\mid x > 3`, `x \\in \\mathbb{R} : ...`, `x | |x| < 2`."""
    for sep in ("\\mid", ":", "|"):
        if len(parts := _split_top(inner, sep)) > 1:
            name, rel = parts[0].split("\\in")[0].strip(), _relation(sep.join(parts[1:]))
            return ("setb", name, rel) if rel and _VARIABLE.fullmatch(name) else None
    return None


@functools.lru_cache(maxsize=1 << 14)  # answers repeat within a group
def _structure(s: str) -> tuple:
    """("matrix", rows) | ("union"|"list"|"set", items) | ("seq", brackets, items) | ("setb", name, rel)
    | ("rel", ops, sides) | ("eq", lhs, rhs) | ("neg", structure) | ("atom", s)"""
    if m := _MATRIX.fullmatch(s):
        return ("matrix", tuple(tuple(_structure(c) for c in row.split("&")) for row in m.group(1).split("\x03") if row))
    if len(parts := _split_top(s, "\\cup")) > 1:
        return ("union", tuple(_structure(p) for p in parts))
    if len(parts := _split_top(s, ",")) > 1 or len(_split_top(s, "\\pm")) == 2:
        return ("list", tuple(_items(parts)))
    if s[:1] == "\x01" and _wrapped(s) and (builder := _set_builder(s[1:-1])):
        return builder
    if _wrapped(s) and len(parts := _split_top(s[1:-1], ",")) > 1 or s[:1] == "\x01" and _wrapped(s):
        parts = _split_top(s[1:-1], ",")
        if s[0] == "\x01":
            return ("set", tuple(_items(parts)))
        brackets = ("(" if parts[0] == "-\\infty" else s[0]) + (")" if parts[-1].lstrip("+") == "\\infty" else s[-1])
        return ("seq", brackets, tuple(_structure(p) for p in parts))  # an infinite end is open: [-\infty,0] = (-\infty,0]
    if rel := _relation(s):
        return rel
    if len(sides := _split_top(s, "=")) == 2:
        return ("eq", sides[0], sides[1])
    if s[:1] == "-" and (inner := _structure(s[1:]))[0] in ("seq", "matrix", "set", "union"):
        return _negated(inner)
    return ("atom", s)


def _negated(s: tuple) -> tuple:
    """-(a, b) is (-a, -b), -M is M with every entry negated; ("neg", s) for anything else (-[1, 2], -\\{1\\})."""
    if s[0] == "seq" and s[1] == "()" and all(x[0] == "atom" for x in s[2]):
        return ("seq", "()", tuple(("atom", f"-({x[1]})") for x in s[2]))
    if s[0] == "matrix" and all(c[0] == "atom" for row in s[1] for c in row):
        return ("matrix", tuple(tuple(("atom", f"-({c[1]})") for c in row) for row in s[1]))
    return ("neg", s)


_WORD = re.compile(r"[A-Za-z]{3,}")
_BASE = re.compile(r"(\d+)_\{?(\d+)\}?")


@functools.lru_cache(maxsize=1 << 14)
def _known(s: tuple) -> bool:
    """Does the fast path read every atom of this structure (so that a mismatch of kinds is a certain False)?"""
    if s[0] == "atom":
        a = s[1]
        return bool(_WORD.fullmatch(a) or _BASE.fullmatch(a) or a.lstrip("+-") == "\\infty" or _parse(a))
    if s[0] == "matrix":
        return all(_known(c) for row in s[1] for c in row)
    if s[0] == "neg":
        return _known(s[1])
    if s[0] in ("eq", "rel", "setb"):
        return False  # handled before any kind mismatch is judged
    return all(_known(x) for x in s[-1])


@functools.lru_cache(maxsize=1 << 14)
def _label(lhs: str) -> bool:
    """Is `lhs = value` a labelled value: names only, no numbers (`(a,b)`, `|PQ|`, `S_1:S_2`, `\\frac{AM}{MC}`, `f(x)`)?"""
    if _wrapped(lhs) and lhs[0] == "(" and len(parts := _split_top(lhs[1:-1], ",")) > 1:
        return all(_label(p) for p in parts)
    parsed = _parse(lhs.replace("\\angle", ""))
    return parsed is not None and bool(parsed[2]) and not _has_number(parsed[0])


def _has_number(tree) -> bool:
    return tree[0] == "n" or any(_has_number(c) for c in tree[1:] if isinstance(c, tuple))


# ----------------------------------------------------------------------------- relations as sets of one variable

def _rel_interval(rel: tuple):
    """(name, lo, lo_closed, hi, hi_closed) for a relation linear in one variable (lo/hi None: infinite), else None.
    `a < m < b` with m = c*v + d solves to ((a - d)/c, (b - d)/c), swapped when c < 0; `l < r` via l - r."""
    ops, sides = rel[1], rel[2]
    if any(op not in ("<", "\\leq") for op in ops) or len(sides) not in (2, 3):
        return None
    if len(sides) == 2:
        if (difference := _equation(*sides)) is None or (line := _linear(difference)) is None:
            return None
        name, a, b = line
        bound, closed = (("n", -b / a), difference[1], frozenset()), ops[0] == "\\leq"
        return (name, None, False, bound, closed) if a > 0 else (name, bound, closed, None, False)
    lo, mid, hi = (_parse(x) for x in sides)
    if None in (lo, mid, hi) or lo[2] or hi[2] or (line := _linear(mid)) is None:
        return None
    name, a, b = line
    ends = [((("/", ("+", end[0], ("n", -b)), ("n", a)), end[1], frozenset()), op == "\\leq")
            for end, op in ((lo, ops[0]), (hi, ops[1]))]
    (lo, lo_closed), (hi, hi_closed) = ends if a > 0 else ends[::-1]
    return (name, lo, lo_closed, hi, hi_closed)


def _interval(s: tuple):
    """The interval of a relation, a set-builder or an interval `(a, b]` with constant ends, else None."""
    if s[0] == "rel":
        return _rel_interval(s)
    if s[0] == "setb":
        found = _rel_interval(s[2])
        return found if found and found[0] == s[1] else None
    if s[0] != "seq" or len(s[2]) != 2 or any(x[0] != "atom" for x in s[2]) or s[1] not in ("()", "(]", "[)", "[]"):
        return None
    ends = []
    for x, closed in ((s[2][0][1], s[1][0] == "["), (s[2][1][1], s[1][1] == "]")):
        if x.lstrip("+-") == "\\infty":
            ends += [None, False]
        elif (parsed := _parse(x)) is None or parsed[2]:
            return None
        else:
            ends += [parsed, closed]
    return (None, *ends)


def _compare_relations(p: tuple, g: tuple, slow) -> bool | None:
    """A relation gold accepts the same relation, its interval or set-builder form; an interval gold accepts a
    set-builder pred (both are sets) but not a bare relation (math-verify's direction rule). Relations not linear
    in one variable: True when the same up to a positive factor (2 sides) or side by side (chains), else undecided."""
    if g[0] not in ("rel", "setb", "seq") or g[0] == "seq" and p[0] == "rel":
        return None
    pi, gi = _interval(p), _interval(g)
    if pi and gi and (pi[0] is None or gi[0] is None or pi[0] == gi[0]):
        if (pi[1] is None) != (gi[1] is None) or (pi[3] is None) != (gi[3] is None) or (pi[2], pi[4]) != (gi[2], gi[4]):
            return False
        try:
            return all(_values_equal(a, b, False, False) for a, b in ((pi[1], gi[1]), (pi[3], gi[3])) if a)
        except _Undecided:
            return None
    pr, gr = (x[2] if x[0] == "setb" else x for x in (p, g))
    if pr[0] != "rel" or gr[0] != "rel" or pr[1] != gr[1] or len(pr[2]) != len(gr[2]):
        return None
    if len(pr[2]) == 2:
        return _atom_equal(pr[2], gr[2], slow, "ineq" if pr[1][0] != "\\neq" else "eq") or None
    return _all(_atom_equal(a, b, slow) for a, b in zip(pr[2], gr[2])) or None


# ----------------------------------------------------------------------------- comparison

def _all(verdicts) -> bool | None:
    """Tri-state AND: False if any is False, True if all are True, else None (undecided)."""
    result = True
    for v in verdicts:
        if v is False:
            return False
        result = result and v
    return True if result else None


def _unordered(preds: tuple, golds: tuple, slow) -> bool | None:
    """Multiset match: every gold item paired with a distinct equivalent pred item."""
    if len(preds) != len(golds):
        return False
    free, undecided = list(preds), False
    for g in golds:
        verdicts = [_compare(p, g, slow) for p in free]
        if True in verdicts:
            free.pop(verdicts.index(True))
        elif None in verdicts:
            undecided = True
        else:
            return False
    return None if undecided else True


def _compare_equations(p: tuple, g: tuple, slow) -> bool | None:
    """Same left side: the right sides; else lhs - rhs proportional. A labelled value (`(a,b)=(5,1)`, `|PQ|=4`)
    equals the bare value; so does a true equation between constants (`2^{10}=1024`) as a pred."""
    if p[0] == g[0] == "eq":
        if p[1] == g[1]:
            return _compare(_structure(p[2]), _structure(g[2]), slow)
        return _atom_equal(p[1:], g[1:], slow, "eq")
    eq, other = (p, g) if p[0] == "eq" else (g, p)
    if _label(eq[1]):
        rhs = _structure(eq[2])
        return _compare(rhs, other, slow) if eq is p else _compare(other, rhs, slow)
    if eq is p and (lhs := _parse(p[1])) is not None and not lhs[2]:
        return _all([_compare(_structure(p[1]), _structure(p[2]), slow), _compare(_structure(p[2]), g, slow)])
    return None


def _compare(p: tuple, g: tuple, slow) -> bool | None:
    """Tri-state structural comparison (None: the fast path cannot tell); `slow(p, g, mode)` (sympy) settles
    atoms whose evaluation is undecided when given."""
    if p == g:
        return True
    if {p[0], g[0]} & {"rel", "setb"}:
        return _compare_relations(p, g, slow)
    if "eq" in (p[0], g[0]):
        return _compare_equations(p, g, slow)
    if p[0] in ("list", "set") and g[0] in ("list", "set") or p[0] == g[0] == "union":
        return _unordered(p[1], g[1], slow)
    if {p[0], g[0]} == {"set", "atom"} and len((p if p[0] == "set" else g)[1]) == 1:  # \\{3\\} and 3
        return _compare(p[1][0] if p[0] == "set" else p, g[1][0] if g[0] == "set" else g, slow)
    if p[0] != g[0]:
        return False if _known(p) and _known(g) else None
    if p[0] == "atom":
        return _atom_equal(p[1], g[1], slow)
    if p[0] == "seq" and (p[1] != g[1] or len(p[2]) != len(g[2])):
        return False
    pairs = zip(p[2], g[2]) if p[0] == "seq" else [(a, b) for pr, gr in zip(p[1], g[1]) for a, b in zip(pr, gr)]
    if p[0] == "matrix" and [len(r) for r in p[1]] != [len(r) for r in g[1]]:
        return False
    return _all(_compare(a, b, slow) for a, b in pairs)


def _atom_equal(p, g, slow, mode: str = "value") -> bool | None:
    """Atoms (strings; or (lhs, rhs) pairs in modes "eq" and "ineq"): strings, words, then parsed values."""
    if p == g:
        return True
    if mode == "value":
        if _WORD.fullmatch(p) or _WORD.fullmatch(g):
            return p.lower() == g.lower()
        if m := _BASE.fullmatch(g):  # 52_8: the digits, with or without the base
            return p == m.group(1) or (n := _BASE.fullmatch(p)) is not None and n.groups() == m.groups()
        if "\\infty" in p + g:  # the evaluator has no infinity
            return p.lstrip("+") == g.lstrip("+")
    parsed = [_parse(x) if mode == "value" else _equation(*x) for x in (p, g)]
    if None in parsed:
        return None  # not an expression the fast path reads: math-verify decides
    try:
        return _values_equal(*parsed, exact_gold=mode == "value" and bool(_INT.fullmatch(g)),
                             proportional=mode != "value", positive=mode == "ineq")
    except _Undecided:
        return None if slow is None else slow(p, g, mode)


# ----------------------------------------------------------------------------- child processes (sympy stage, batch workers)

class _Child:
    """A child `python reward.py --serve KIND` answering one JSON line per request line."""

    def __init__(self, kind: str):
        self.kind, self.proc, self.buffer, self.ready = kind, None, b"", False

    def start(self):
        self.proc = subprocess.Popen([sys.executable, _REWARD_PY, "--serve", self.kind],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.buffer, self.ready = b"", False

    def kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def _readline(self, deadline: float) -> bytes | None:
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not chunk:
                return None  # the child died
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def prepare(self) -> bool:
        """Start the child if needed and wait until it is ready (not counted in any timeout)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        if not self.ready:
            self.ready = self._readline(time.monotonic() + STARTUP_TIMEOUT) == b"ready"
        return self.ready

    def send(self, request) -> bool:
        """Start the child if needed, wait until it is ready, send."""
        try:
            if self.prepare():
                self.proc.stdin.write(json.dumps(request).encode() + b"\n")
                return True
        except OSError:
            pass
        self.kill()
        return False

    def receive(self, timeout: float):
        """The reply, or None when none came within `timeout` seconds (the child is then killed)."""
        line = self._readline(time.monotonic() + timeout)
        if line is None:
            self.kill()
            return None
        return json.loads(line)


_SYMPY_CHILD, _LOCK = _Child("sympy"), threading.Lock()
atexit.register(_SYMPY_CHILD.kill)
_MATH_VERIFY = {"available": None, "cache": {}}  # whether math_verify can be imported; verdicts by (pred, gold)


def _ask_child(request: list, state: dict):
    """One request to the sympy child within the comparison's deadline (waiting for it to start is not counted).
    None when it could not start or ran out of time (a timeout counts; a child that did not answer is replaced)."""
    with _LOCK:
        waited = time.monotonic()
        ready = _SYMPY_CHILD.prepare()
        state["deadline"] += time.monotonic() - waited
        budget = state["deadline"] - time.monotonic()
        if not ready or not _SYMPY_CHILD.send(request + [budget]):
            STATS["child_failures"] += 1  # it could not start: not equal, and the next call tries again
            return None
        reply = _SYMPY_CHILD.receive(budget)
        if reply is None or reply == "timeout":
            state["timed_out"] = True
            STATS["timeouts"] += 1
            if reply is None:
                _SYMPY_CHILD.start()  # warm up the replacement while the caller goes on
            return None
    return reply


def _remote_sympy(p, g, mode: str, state: dict) -> bool:
    """simplify() in the child for atoms the evaluator cannot decide; numbers too big for sympy are unequal."""
    parsed = [_parse(x) if mode == "value" else _equation(*x) for x in (p, g)]
    if max(_log2_bound(x[0]) for x in parsed) > MAX_SYMPY_BITS:
        STATS["refused"] += 1
        return False
    STATS["sympy_calls"] += 1
    return bool(_ask_child([p, g, mode], state))


def _math_verify_missing(reason: str) -> bool:
    if _MATH_VERIFY["available"] is not False:
        print(f"answer_equiv: math-verify {reason}: answers the built-in rules cannot decide are judged not equal "
              "(pip install math-verify==0.9.0)", file=sys.stderr)
    _MATH_VERIFY["available"] = False
    return False


_DOLLAR = re.compile(r"(?<!\\)\$")


def _remote_math_verify(pred: str, gold: str, state: dict) -> bool:
    """math-verify's verdict (gold first: it is asymmetric), computed in the child; cached by (pred, gold)."""
    key = (_DOLLAR.sub("", pred.strip()), _DOLLAR.sub("", _unbox(gold.strip())))
    if key in _MATH_VERIFY["cache"]:
        return _MATH_VERIFY["cache"][key]
    if _MATH_VERIFY["available"] is None:
        try:
            found = importlib.util.find_spec("math_verify") is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return _math_verify_missing("is not installed")
        _MATH_VERIFY["available"] = True
    if not _MATH_VERIFY["available"]:
        return False
    STATS["math_verify_calls"] += 1
    reply = _ask_child(list(key) + ["mv"], state)
    if reply == "unavailable":
        return _math_verify_missing("cannot be imported")
    if reply is None:
        return False
    if len(_MATH_VERIFY["cache"]) > 1 << 14:
        _MATH_VERIFY["cache"].clear()
    _MATH_VERIFY["cache"][key] = bool(reply)
    return bool(reply)


class _Alarm(BaseException):
    """Raised in the child when a request's time is up (a BaseException, so no library swallows it)."""


def _on_alarm(signum, frame):
    raise _Alarm


def prepare_child():
    """In the child, before it announces readiness: import sympy and math-verify, and warm math-verify up."""
    import sympy  # noqa: F401
    try:
        import math_verify
    except ImportError:
        return
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # its "timeout disabled" notice: ours is SIGALRM
    _math_verify_equal("x \\leq 3", "(-\\infty, 3]")


def _math_verify_equal(pred: str, gold: str):
    try:
        import math_verify
    except ImportError:
        return "unavailable"
    gold_parsed = math_verify.parse("\\boxed{%s}" % gold, parsing_timeout=None)
    pred_parsed = math_verify.parse("\\boxed{%s}" % pred, parsing_timeout=None)
    return bool(gold_parsed and pred_parsed and math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None))


def serve_request(request: list):
    """The child's answer to [pred, gold, mode, seconds]: a verdict, "timeout" (SIGALRM: Python-level work
    interrupted, the child lives on) or "unavailable" (no math-verify). C-level hangs are the parent's to kill."""
    p, g, mode, budget = request
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(budget - 0.05, 0.01))
    try:
        return _math_verify_equal(p, g) if mode == "mv" else _sympy_equal(p, g, mode)
    except _Alarm:
        return "timeout"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _equiv(pred: str, gold: str, timeout: float = 1.0, multiple_answers: bool = False) -> tuple[bool, bool]:
    """(equivalent, timed_out): the fast path, then sympy for undecided atoms, then math-verify."""
    if not isinstance(pred, str) or not isinstance(gold, str) or not pred.strip() or not gold.strip():
        return False, False
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return pred.strip() == gold.strip(), False
    try:
        p, g = (_clean(x, multiple_answers) for x in (pred, gold))
        if not p or not g:  # "$$", "\text{}": nothing left to compare
            return False, False
        p, g = _structure(p), _structure(g)
        verdict = _compare(p, g, None)
        if verdict is not None:
            return verdict, False
        state = {"deadline": time.monotonic() + timeout, "timed_out": False}
        verdict = _compare(p, g, lambda a, b, mode: not state["timed_out"] and _remote_sympy(a, b, mode, state))
        if verdict is None and not state["timed_out"]:
            verdict = _remote_math_verify(pred, gold, state)
        return bool(verdict), state["timed_out"]
    except Exception:  # a bug or bad input must never crash training: not equal
        return False, False


def is_equiv(pred: str, gold: str, timeout: float = 1.0, multiple_answers: bool = False) -> bool:
    """True when `pred` is the same answer as `gold` (see the module docstring). Never raises or hangs."""
    return _equiv(pred, gold, timeout, multiple_answers)[0]


_PROBES = ("0", "1", "x", "\\text{qzv}")  # pairwise inequivalent: a gold may legitimately match one


def validate_gold(gold: str) -> str | None:
    """None when the gold is usable, else a one-line reason (called on every gold at load time)."""
    if not isinstance(gold, str) or not gold.strip():
        return "is empty" if isinstance(gold, str) else f"is a {type(gold).__name__}, not text"
    if len(gold) > MAX_ANSWER_CHARS:
        return f"is longer than {MAX_ANSWER_CHARS} characters"
    if "\\boxed" in _unbox(gold.strip()) or "\\fbox" in _unbox(gold.strip()):
        return "contains \\boxed (extract the answer from it first)"
    if gold.count("{") - gold.count("\\{") != gold.count("}") - gold.count("\\}"):
        return "has unbalanced braces"
    if not _clean(gold):
        return "is empty after normalisation"
    if not is_equiv(gold, gold):
        return "does not match itself (cannot be normalised)"
    if sum(is_equiv(probe, gold) for probe in _PROBES) > 1:
        return "matches unrelated answers (every response would be correct)"
    return None
