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
import json
import os
import re
import select
import subprocess
import sys
import threading
import time

from latex_expr import _INT, _Undecided, _equation, _log2_bound, _parse, _values_equal

MAX_ANSWER_CHARS = 1000  # longer answers: exact string comparison only (bounds every regex and the parser)
MAX_SYMPY_BITS = 1e6     # numbers bigger than this are never built by sympy: judged unequal
STARTUP_TIMEOUT = 60.0   # seconds a child process may take to start (not counted in a comparison)
STATS = {"sympy_calls": 0, "timeouts": 0, "refused": 0, "child_failures": 0}  # this process's counters
_REWARD_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reward.py")  # children run its --serve


# ----------------------------------------------------------------------------- normalisation

_UNICODE = str.maketrans({"−": "-", "–": "-", "×": "\\times ", "÷": "\\div ", "·": "\\cdot ", "π": "\\pi ",
                          "√": "\\sqrt", "∞": "\\infty ", "°": "^\\circ", "≤": "\\le ", "≥": "\\ge ",
                          "∪": "\\cup ", "\u2009": " ", "\u00a0": " ", "\n": " ", "\t": " "})
_SUBS = [(re.compile(p), r) for p, r in [
    (r"\\(?:left|right)\.|\\(?:left|right|[bB]igg?[lr]?|displaystyle)(?![a-zA-Z])", ""),
    (r"\\[,;:! ]|\\q?quad(?![a-zA-Z])|~", " "), (r"\\[dtc]frac", r"\\frac"), (r"\{,\}", ","),
    (r"\\(?:le|leqslant)(?![a-zA-Z])", r"\\leq"), (r"\\(?:ge|geqslant)(?![a-zA-Z])", r"\\geq"),
    (r"\\ne(?![a-zA-Z])", r"\\neq"), (r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree", ""),
    (r"\\text\{\s*(?:or|and)\s*\}", ","),
    (r"^(.*[^\s{_^])\s*\\(?:text|mbox|mathrm)\s*\{\s*[a-zA-Z][a-zA-Z .]*\}\s*(?:\^\s*\{?\d\}?)?$", r"\1"),
    (r"\\(?:text|textbf|textit|textrm|mbox|mathrm|mathbf|mathit|operatorname|boldsymbol)\s*\{([^{}]*)\}", r"\1"),
    (r"^([-+]?[\d.,]*\d|\\frac\{[^{}]*\}\{[^{}]*\})\s+(?:[a-zA-Z]{3,}|cm|mm|km|ft|in|kg|mi)(?:\s+[a-zA-Z]+)*"
     r"(?:\^\s*\{?\d\}?)?\s*$", r"\1"),  # bare unit words after a number: "18 dollars", "15 cm^2"
    (r"\\?[%$]", ""), (r"\\\{", "\x01"), (r"\\\}", "\x02"),
    (r"(\\[a-zA-Z]+) +(?=[a-zA-Z])", "\\1\x00"), (r" +", ""), (r"\x00", " "),  # keep `\pi r` apart
    (r"^[a-zA-Z]\\in", ""), (r"\.$", ""), (r"^\(([A-E])\)$", r"\1")]]
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


@functools.lru_cache(maxsize=1 << 14)  # answers repeat within a group
def _clean(s: str, multiple: bool = False) -> str:
    """Canonical string of an answer: formatting removed, structure and values untouched."""
    s = s.translate(_UNICODE).replace("\\\\", "\x03").strip()  # \x03: matrix row separator
    for pattern, repl in _SUBS:
        s = pattern.sub(repl, s)
    if not multiple and _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return s


# ----------------------------------------------------------------------------- structure

_OPEN, _CLOSE = "([{\x01", ")]}\x02"
_MATRIX = re.compile(r"\\begin\{[pb]?matrix\}(.*)\\end\{[pb]?matrix\}")
_SIMPLE_LHS = re.compile(r"(\\?[A-Za-z]+)(_\{?[\w\\]+\}?)?(\([^()]*\))?")


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


@functools.lru_cache(maxsize=1 << 14)  # answers repeat within a group
def _structure(s: str) -> tuple:
    """("matrix", rows) | ("union"|"list"|"set", items) | ("seq", brackets, items) | ("eq", lhs, rhs) | ("atom", s)"""
    if m := _MATRIX.fullmatch(s):
        return ("matrix", tuple(tuple(_structure(c) for c in row.split("&")) for row in m.group(1).split("\x03") if row))
    if len(parts := _split_top(s, "\\cup")) > 1:
        return ("union", tuple(_structure(p) for p in parts))
    if len(parts := _split_top(s, ",")) > 1 or len(_split_top(s, "\\pm")) == 2:
        return ("list", tuple(_items(parts)))
    if _wrapped(s) and len(parts := _split_top(s[1:-1], ",")) > 1 or s[:1] == "\x01" and _wrapped(s):
        parts = _split_top(s[1:-1], ",")
        if s[0] == "\x01":
            return ("set", tuple(_items(parts)))
        brackets = ("(" if parts[0] == "-\\infty" else s[0]) + (")" if parts[-1].lstrip("+") == "\\infty" else s[-1])
        return ("seq", brackets, tuple(_structure(p) for p in parts))  # an infinite end is open: [-\infty,0] = (-\infty,0]
    if len(sides := _split_top(s, "=")) == 2:
        return ("eq", sides[0], sides[1])
    return ("atom", s)


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


def _compare(p: tuple, g: tuple, slow) -> bool | None:
    """Tri-state structural comparison; `slow(p, g, mode)` (sympy) settles undecided atoms when given."""
    if p == g:
        return True
    if "eq" in (p[0], g[0]):
        if p[0] == g[0] == "eq":
            return _atom_equal(p[2], g[2], slow) if p[1] == g[1] else _atom_equal(p[1:], g[1:], slow, "eq")
        eq, other = (p, g) if p[0] == "eq" else (g, p)
        if other[0] != "atom" or not _SIMPLE_LHS.fullmatch(eq[1]):
            return False  # only `name = value` compares with a bare value
        return _atom_equal(p[2], g[1], slow) if p is eq else _atom_equal(p[1], g[2], slow)
    if p[0] in ("list", "set") and g[0] in ("list", "set") or p[0] == g[0] == "union":
        return _unordered(p[1], g[1], slow)
    if p[0] != g[0]:
        return False
    if p[0] == "atom":
        return _atom_equal(p[1], g[1], slow)
    if p[0] == "seq" and (p[1] != g[1] or len(p[2]) != len(g[2])):
        return False
    pairs = zip(p[2], g[2]) if p[0] == "seq" else [(a, b) for pr, gr in zip(p[1], g[1]) for a, b in zip(pr, gr)]
    if p[0] == "matrix" and [len(r) for r in p[1]] != [len(r) for r in g[1]]:
        return False
    return _all(_compare(a, b, slow) for a, b in pairs)


_WORD = re.compile(r"[A-Za-z]{3,}")
_BASE = re.compile(r"(\d+)_\{?(\d+)\}?")


def _atom_equal(p, g, slow, mode: str = "value") -> bool | None:
    """Atoms (strings; or (lhs, rhs) pairs in mode "eq"): strings, words, then parsed values."""
    if p == g:
        return True
    if mode == "value":
        if _WORD.fullmatch(p) or _WORD.fullmatch(g):
            return p.lower() == g.lower()
        if m := _BASE.fullmatch(g):  # 52_8: the digits, with or without the base
            return p == m.group(1) or (n := _BASE.fullmatch(p)) is not None and n.groups() == m.groups()
        if "\\infty" in p + g:  # the evaluator has no infinity
            return p.lstrip("+") == g.lstrip("+")
    parsed = [_equation(*x) if mode == "eq" else _parse(x) for x in (p, g)]
    if None in parsed:
        return False  # an unparseable atom equals only an identical string
    try:
        return _values_equal(*parsed, exact_gold=mode == "value" and bool(_INT.fullmatch(g)), proportional=mode == "eq")
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

    def send(self, request) -> bool:
        """Start the child if needed, wait until it is ready (not counted in any timeout), send."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        if not self.ready:
            self.ready = self._readline(time.monotonic() + STARTUP_TIMEOUT) == b"ready"
        try:
            if self.ready:
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


def _remote_sympy(p, g, mode: str, deadline: float, state: dict) -> bool:
    """Ask the sympy child, within the comparison's deadline; a timeout kills it and counts."""
    parsed = [_equation(*x) if mode == "eq" else _parse(x) for x in (p, g)]
    if max(_log2_bound(x[0]) for x in parsed) > MAX_SYMPY_BITS:
        STATS["refused"] += 1
        return False
    STATS["sympy_calls"] += 1
    with _LOCK:
        if not _SYMPY_CHILD.send([p, g, mode]):
            STATS["child_failures"] += 1  # it could not start: not equal, and the next call tries again
            return False
        reply = _SYMPY_CHILD.receive(deadline - time.monotonic())
        if reply is None:
            state["timed_out"] = True
            STATS["timeouts"] += 1
            _SYMPY_CHILD.start()  # warm up the replacement while the caller goes on
    return bool(reply)


def _equiv(pred: str, gold: str, timeout: float = 1.0, multiple_answers: bool = False) -> tuple[bool, bool]:
    """(equivalent, timed_out)."""
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
        deadline, state = time.monotonic() + timeout, {"timed_out": False}
        verdict = _compare(p, g, lambda a, b, mode: not state["timed_out"] and _remote_sympy(a, b, mode, deadline, state))
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
    if "\\boxed" in gold or "\\fbox" in gold:
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
