"""Math answer reward: the last \\boxed{} of a response, judged against the gold answer, as an RL reward.

    score = [answer is correct] - format_penalty * [no answer extracted] + overlong(len)
    overlong(len) = 0                                        len <= max_len - buffer          (DAPO soft
                  = -factor * (len - (max_len - buffer)) / buffer   in between                 overlong
                  = -factor                                  len >= max_len                    punishment)

Extraction: the content of the last \\boxed{...} / \\fbox{...} (nested braces; `\\boxed 5` without braces).
An empty or unclosed last box is no answer, never an earlier box or the last number. Optional fallbacks
(`fallbacks=True`), used only when there is no box: the last "the answer is X", "Answer: X" or "#### X".

Equivalence, `is_equiv(pred, gold)`, in two stages:
1. In process, no sympy (decides nearly every case in ~0.1 ms): normalise both strings (\\left/\\right,
   \\dfrac, spacing, $, \\%, degrees, \\text{} and trailing units, thousands separators `10,\\!080`,
   choice letters `(C)`), split the structure (tuples and intervals: order and bracket types matter;
   sets `\\{\\}`, bare comma lists, unions and `\\pm`: order does not; pmatrix/bmatrix; equations `x = 3`
   vs `3`), then parse each atom into a small expression tree and evaluate it: exactly in rationals
   (Fraction) where possible, else in complex floats; variables are set to 3 fixed generic rationals.
   Words (>= 3 letters, or a whole \\text{}) compare as case-insensitive strings; unparseable atoms as strings.
2. sympy, only for pairs stage 1 cannot evaluate (float overflow, division by zero, infinities):
   simplify(pred - gold) == 0 on sympy trees built from the same parse (sympy never parses text), in a
   child process `python reward.py --serve sympy` that is killed and restarted when it exceeds the
   timeout (SIGALRM cannot interrupt a C-level bignum power). Numbers that would exceed 10^6 bits
   (9^{9^{9^9}}, 1000000!) are judged unequal before sympy sees them. Timeouts are counted in STATS.
Numeric tolerance: |p - g| <= 1e-4 * max(|p|, |g|) when either side has a decimal or scientific literal
(rounded numbers: the Qwen2.5-Math evaluation's rel_tol), except that an integer gold needs an exactly
equal decimal (17.9999 is not 18); otherwise exact for rationals and 1e-9 relative (+1e-12 absolute)
for float round-off of exact expressions (2\\sqrt{3} vs \\sqrt{12}).
Deviations, deliberate: answers longer than 1000 characters are compared as exact strings only; 90^\\circ
is 90, not pi/2; 62.5% is 62.5 (not 0.625); an interval's infinite end is open whatever its bracket
([-\\infty, 0] = (-\\infty, 0], as math-verify); `52` matches a base-subscripted gold `52_8`; `e` is Euler's number
and `i` the imaginary unit; a letter before a one-token parenthesis `u(t)`, `I(0)` is a function
value, otherwise `x(x+1)` is a product; symbolic equality is equality at 3 generic points (sqrt(x^2)
equals x there); equations with different left sides are equal when lhs - rhs are proportional;
with multiple_answers (OlympiadBench) commas always separate answers (`1,250` is two answers).

Batch scoring (`score_batch(..., workers=N)`) sends chunks to N child processes `python reward.py --serve
score`, started once and reused: fresh interpreters (safe with torch/CUDA loaded in the caller, and
unlike multiprocessing's spawn they do not re-import the caller's __main__); a worker that dies or
stalls is killed and its chunk scored in process. Children die with their parent (Linux PR_SET_PDEATHSIG).

    python reward.py "... so the answer is \\boxed{\\frac12}." "0.5"     # extracted answer and verdict
    python reward.py --bench --workers 2                                  # checks/s, worst-case latency
"""
import argparse
import atexit
import cmath
import functools
import json
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from fractions import Fraction

from cli import add_dataclass_args, dataclass_from_args

MAX_ANSWER_CHARS = 1000  # longer answers: exact string comparison only (bounds every regex and the parser)
MAX_SYMPY_BITS = 1e6     # numbers bigger than this are never built by sympy: judged unequal
STARTUP_TIMEOUT = 60.0   # seconds a child process may take to start (not counted in a comparison)
STATS = {"sympy_calls": 0, "timeouts": 0, "refused": 0, "child_failures": 0}  # this process's counters


@dataclass
class RewardConfig:
    fallbacks: bool = False        # also accept "the answer is X" / "Answer: X" / "#### X" when no \boxed{}
    format_penalty: float = 0.0    # score given to a response with no extractable answer is -format_penalty
    overlong_buffer: int = 0       # DAPO soft overlong punishment: last `buffer` tokens before max_len
    overlong_factor: float = 1.0   # ... linear penalty down to -factor at max_len
    timeout: float = 1.0           # hard wall-clock seconds per comparison

    def __post_init__(self):
        for name in ("format_penalty", "overlong_buffer", "overlong_factor"):
            if getattr(self, name) < 0:
                raise ValueError(f"RewardConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.timeout > 0:
            raise ValueError(f"RewardConfig.timeout must be > 0 seconds, got {self.timeout}")


@dataclass
class RewardResult:
    score: float            # the reward
    answer: str | None      # extracted answer, None when the response has none
    correct: bool           # answer equivalent to the gold
    format_ok: bool         # an answer was extracted
    timed_out: bool         # the equivalence check hit its time limit (counted as not correct)


# ----------------------------------------------------------------------------- extraction

_FALLBACK = re.compile(r"(?:the (?:final )?answer is|^\W*(?:final )?answer\W*:|####)[ \t:]*(.+)", re.I | re.M)


def extract_answer(text: str, fallbacks: bool = False) -> str | None:
    """Content of the last \\boxed{}/\\fbox{} (None if empty or unclosed); with fallbacks, the last
    "the answer is X" / "Answer: X" / "#### X" when there is no box."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        matches = list(_FALLBACK.finditer(text)) if fallbacks else []
        if not matches:
            return None
        answer = re.split(r"\.(?:\s|$)", matches[-1].group(1))[0]  # up to the end of the sentence
        return answer.strip().strip("$*").strip() or None
    i = start + (6 if text.startswith("\\boxed", start) else 5)  # len("\\boxed"), len("\\fbox")
    if text[i:i + 1] == " ":  # `\boxed 5`: one space-delimited token
        token = re.match(r" +([^\s$]+)", text[i:])
        return (token.group(1).rstrip(".,") or None) if token else None
    if text[i:i + 1] != "{":
        return None
    depth, j = 0, i
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2  # \{ and \} are literal braces, not grouping
            continue
        depth += (c == "{") - (c == "}")
        if depth == 0:
            return text[i + 1:j].strip() or None
        j += 1
    return None  # unclosed box (e.g. a truncated response)


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


# ----------------------------------------------------------------------------- expression trees
# Self-contained: parse LaTeX math to trees, evaluate them (exact / float), build sympy trees from them.

REL_TOL = 1e-4           # relative tolerance when a rounded (decimal / scientific) number is involved
FLOAT_TOL = 1e-9         # relative float round-off allowed for exact expressions evaluated in floats
MAX_BITS = 100_000       # exact rationals above this size are handed to floats (and then sympy)
_INT = re.compile(r"-?\d+")

_TOKEN = re.compile(r"\s*(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\\[a-zA-Z]+|\S)")
_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh",
          "ln", "log", "exp"}
_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta",
          "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi",
          "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega",
          "hbar", "ell"}


class _Undecided(Exception):
    """The in-process evaluator cannot decide (overflow, 1/0, infinity): sympy is asked."""


def _starts_factor(token: str) -> bool:
    """Can this token begin a factor of an implicit product (2x, 2\\sqrt{3}, (a+5)(b+2))?"""
    return (token[0].isalnum() or token[0] == "." and token[1:2].isdigit() or token in "({["
            or token[1:] in _FUNCS | _GREEK or token in ("\\frac", "\\sqrt", "\\binom", "\\pi", "\\lfloor", "\\lceil"))


class _Parser:
    """Recursive descent over LaTeX math: + - * / ^ ! \\frac \\sqrt \\binom \\lfloor \\lceil |.| functions,
    implicit multiplication. Trees are tuples: ("n", Fraction) ("v", name) ("c", pi|e|i|oo) ("+", a, b)
    ("*", a, b) ("/", a, b) ("neg", a) ("^", a, b) ("!", a) ("f", name, a) ("log", a, base) ("binom", a, b)
    ("root", a, n) ("abs", a) ("floor", a) ("ceil", a)."""

    def __init__(self, text):
        self.toks, self.i, self.approx, self.names = _TOKEN.findall(text), 0, False, set()

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected=None):
        t = self.peek()
        if t is None or expected is not None and t != expected:
            raise ValueError(f"expected {expected}, got {t}")
        self.i += 1
        return t

    def expr(self):
        node = self.term()
        while self.peek() in ("+", "-"):
            node = ("+", node, self.term() if self.take() == "+" else ("neg", self.term()))
        return node

    def term(self):
        node = self.unary()
        while (t := self.peek()) is not None:
            if t in ("*", "\\cdot", "\\times"):
                self.take(); node = ("*", node, self.unary())
            elif t in ("/", "\\div"):
                self.take(); node = ("/", node, self.unary())
            elif _starts_factor(t):
                node = ("*", node, self.power())  # implicit multiplication: 2\sqrt{3}, x(x+1)
            else:
                return node
        return node

    def unary(self):
        if self.peek() in ("-", "+"):
            return ("neg", self.unary()) if self.take() == "-" else self.unary()
        return self.power()

    def power(self):
        node = self.atom()
        while self.peek() == "!":
            self.take(); node = ("!", node)
        if self.peek() == "^":
            self.take()
            negative = self.peek() == "-" and self.take() == "-"  # x^-1
            exponent = self.arg(whole=True)
            node = ("^", node, ("neg", exponent) if negative else exponent)
        return node

    def arg(self, whole=False):
        """One TeX argument: a {group}, else one token (`\\frac12`: one digit each, unless `whole`)."""
        t = self.peek()
        if t == "{":
            self.take(); node = self.expr(); self.take("}")
            return node
        if t is not None and t.isdigit() and len(t) > 1 and not whole:
            self.toks[self.i] = t[1:]
            return ("n", Fraction(int(t[0])))
        return self.atom()

    def atom(self):
        t = self.take()
        if t[0].isdigit() or t[0] == "." and t[1:2].isdigit():
            mantissa, _, exp = t.lower().partition("e")
            self.approx |= "." in t or bool(exp)
            value = Fraction(mantissa.rstrip(".") or "0")
            return ("n", value) if not exp else ("*", ("n", value), ("^", ("n", Fraction(10)), ("n", Fraction(int(exp)))))
        if t in ("(", "{", "[", "|"):
            node = self.expr(); self.take({"(": ")", "{": "}", "[": "]", "|": "|"}[t])
            return ("abs", node) if t == "|" else node
        if t in ("\\frac", "\\binom"):
            return ("/" if t == "\\frac" else "binom", self.arg(), self.arg())
        if t == "\\sqrt":
            index = ("n", Fraction(2))
            if self.peek() == "[":
                self.take(); index = self.expr(); self.take("]")
            return ("root", self.arg(whole=True), index)
        if t in ("\\lfloor", "\\lceil"):
            node = self.expr(); self.take(t.replace("\\l", "\\r"))
            return (t[2:], node)
        if t[1:] in _FUNCS:  # \log_2 x, \sin^2 x, \cos(2t): the argument is one power-level factor
            base = exponent = None
            if t == "\\log" and self.peek() == "_":
                self.take(); base = self.arg()
            if self.peek() == "^":
                self.take(); exponent = self.arg(whole=True)
            node = ("log", self.power(), base) if t in ("\\log", "\\ln") else ("f", t[1:], self.power())
            return ("^", node, exponent) if exponent else node
        if t in ("\\pi", "\\infty"):
            return ("c", t[1:])
        if len(t) == 1 and t.isalpha() or t[1:] in _GREEK:
            name = t
            if self.peek() == "_":
                self.take()
                sub = self.take()
                if sub == "{":
                    start = self.i
                    while self.take() != "}":
                        pass
                    sub = "".join(self.toks[start:self.i - 1])
                name += "_" + sub
            if self.peek() == "(" and self.i + 2 < len(self.toks) and self.toks[self.i + 2] == ")":
                name += "(" + self.toks[self.i + 1] + ")"  # u(t), I(0): a function value, not a product
                self.i += 3
            if name in ("e", "i"):
                return ("c", name)
            self.names.add(name)
            return ("v", name)
        raise ValueError(f"unexpected token {t}")


_MIXED = re.compile(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")


@functools.lru_cache(maxsize=1 << 14)  # answers repeat within a group
def _parse(text: str):
    """(tree, has_decimal_literal, variable names) or None when the text is not an expression we read."""
    if m := _MIXED.fullmatch(text):  # 1\frac{4}{5} is the mixed number 9/5, not 4/5
        value = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
        return ("n", -value if m.group(1) else value), False, frozenset()
    try:
        parser = _Parser(text)
        tree = parser.expr()
        if parser.peek() is not None or not parser.toks:
            return None
        return tree, parser.approx, frozenset(parser.names)
    except (ValueError, IndexError, RecursionError, ZeroDivisionError):
        return None


def _equation(lhs: str, rhs: str):
    """The tree of lhs - rhs."""
    a, b = _parse(lhs), _parse(rhs)
    return None if a is None or b is None else (("+", a[0], ("neg", b[0])), a[1] or b[1], a[2] | b[2])


# Fixed generic rationals for variables (3 points); exact arithmetic keeps polynomials exact.
_POINTS = [[Fraction(137 + 61 * k + 29 * j, 97 + 11 * j) for j in range(8)] for k in range(3)]


def _checked(x):
    """x itself when it is a Fraction of bounded size, else x as a finite complex float (or _Undecided)."""
    if isinstance(x, Fraction):
        if max(abs(x.numerator), x.denominator).bit_length() <= MAX_BITS:
            return x
    try:
        x = complex(x)
    except (OverflowError, TypeError):
        raise _Undecided
    if not (cmath.isfinite(x)):
        raise _Undecided
    return x


def _real(x) -> float:
    if abs(complex(x).imag) > 1e-12:
        raise _Undecided
    return complex(x).real


def _real_int(x):
    if isinstance(x, Fraction) and x.denominator == 1:
        return x.numerator
    raise _Undecided


def _evaluate(node, env):
    kind = node[0]
    try:
        if kind == "n":
            return node[1]
        if kind == "v":
            return env[node[1]]
        if kind == "c":
            if node[1] == "oo":
                raise _Undecided
            return {"pi": complex(math.pi), "e": complex(math.e), "i": 1j}[node[1]]
        args = [_evaluate(child, env) if isinstance(child, tuple) else child for child in node[1:]]
        if kind == "+":
            return _checked(args[0] + args[1])
        if kind == "*":
            return _checked(args[0] * args[1])
        if kind == "/":
            return _checked(args[0] / args[1])
        if kind == "neg":
            return -args[0]
        if kind == "^":
            return _power(*args)
        if kind == "root":
            return _root(*args)
        if kind == "abs":
            return _checked(abs(args[0]))
        if kind in ("floor", "ceil"):
            x = args[0] if isinstance(args[0], Fraction) else Fraction(_real(args[0]))
            return Fraction(math.floor(x) if kind == "floor" else math.ceil(x))
        if kind == "!":
            x = args[0]
            if isinstance(x, Fraction) and x.denominator == 1 and 0 <= x <= 3000:
                return Fraction(math.factorial(int(x)))
            return _checked(math.gamma(_real(x) + 1))  # n! at a generic point of n
        if kind == "binom":
            n, k = _real_int(args[0]), _real_int(args[1])
            if not 0 <= n <= MAX_BITS:
                raise _Undecided
            return Fraction(math.comb(n, k) if k >= 0 else 0)
        if kind == "log":
            value = cmath.log(complex(args[0]))
            return _checked(value / cmath.log(complex(args[1])) if args[1] is not None else value)
        name = {"ln": "log", "arcsin": "asin", "arccos": "acos", "arctan": "atan"}.get(node[1], node[1])
        x = complex(args[1])
        if name in ("cot", "sec", "csc"):
            return _checked(1 / {"cot": cmath.tan, "sec": cmath.cos, "csc": cmath.sin}[name](x))
        return _checked(getattr(cmath, name)(x))
    except (OverflowError, ZeroDivisionError, ValueError, TypeError, KeyError):
        raise _Undecided


def _iroot(n: int, k: int) -> int | None:
    """Exact integer k-th root of n >= 0, or None."""
    r = round(n ** (1.0 / k)) if n < 2 ** 1000 else None
    return r if r is not None and r ** k == n else None


def _power(base, exponent):
    if isinstance(base, Fraction) and isinstance(exponent, Fraction):
        p, q = exponent.numerator, exponent.denominator
        if q > 1 and base >= 0 and q <= 64:  # rational power of a perfect power: 8^(2/3) = 4
            num, den = _iroot(base.numerator, q), _iroot(base.denominator, q)
            if num is not None and den is not None:
                base, q = Fraction(num, den), 1
        if q == 1 and (base != 0 or p >= 0):
            if abs(p) * max(abs(base.numerator), base.denominator).bit_length() <= MAX_BITS:
                return base ** p
            raise _Undecided
    return _checked(complex(base) ** complex(exponent))


def _root(x, index):
    k = _real_int(index) if isinstance(index, Fraction) and index.denominator == 1 else None
    if k is not None and k > 0 and isinstance(x, Fraction):
        if x < 0 and k % 2 == 1:
            return -_root(-x, index)  # real odd root: \sqrt[3]{-8} = -2
        if x >= 0:
            return _power(x, Fraction(1, k))
    return _checked(complex(x) ** (1 / complex(index)))


def _close(a, b, tol: float) -> bool:
    if isinstance(a, Fraction) and isinstance(b, Fraction) and (a == b or tol == 0):
        return a == b
    a, b = _checked(complex(a)), _checked(complex(b))
    return abs(a - b) <= max(tol, FLOAT_TOL) * max(abs(a), abs(b)) + (1e-12 if tol != 0 else 0)


def _tolerance(p_approx: bool, g_approx: bool, exact_gold: bool) -> float:
    """Relative tolerance: none for a decimal against an integer gold, REL_TOL for rounded numbers."""
    return 0.0 if exact_gold and p_approx else REL_TOL if p_approx or g_approx else FLOAT_TOL


def _values_equal(p, g, exact_gold: bool, proportional: bool) -> bool:
    """Evaluate both trees (at 3 generic points when they have variables); raises _Undecided."""
    (p_tree, p_approx, p_names), (g_tree, g_approx, g_names) = p, g
    tol = _tolerance(p_approx, g_approx, exact_gold)
    names = sorted(p_names | g_names)
    ratios = []
    for point in _POINTS[:3 if names or proportional else 1]:
        env = {name: point[j % len(point)] for j, name in enumerate(names)}
        a, b = _evaluate(p_tree, env), _evaluate(g_tree, env)
        if proportional:  # equations: lhs - rhs proportional with a nonzero constant
            if b == 0 or a == 0:
                if a != b:
                    return False
                continue
            ratios.append(_checked(a / b))
        elif not _close(a, b, tol):
            return False
    if proportional:
        if not ratios:
            raise _Undecided
        return all(_close(r, ratios[0], tol) for r in ratios)
    return True


def _log2_bound(node) -> float:
    """Upper bound on the bits of any number sympy would build from the tree (variables count as 8)."""
    kind, kids = node[0], [c for c in node[1:] if isinstance(c, tuple)]
    if kind == "n":
        return max(abs(node[1].numerator), node[1].denominator).bit_length()
    if kind in ("^", "!", "binom") or kind == "f" and node[1] in ("exp", "sinh", "cosh"):
        top = 2.0 ** min(_log2_bound(kids[-1] if kind == "^" else kids[0]), 1000.0)
        return top * (max(_log2_bound(kids[0]), 1) if kind == "^" else math.log2(top + 1) + 1)
    return sum(_log2_bound(c) for c in kids) + 8


def _sympy_tree(node):
    import sympy
    kind = node[0]
    args = [_sympy_tree(c) if isinstance(c, tuple) else c for c in node[1:]]
    if kind == "n":
        return sympy.Rational(node[1].numerator, node[1].denominator)
    if kind == "v":
        return sympy.Symbol(node[1], positive=True)  # the fast path's generic points are positive too
    if kind == "c":
        return {"pi": sympy.pi, "e": sympy.E, "i": sympy.I, "oo": sympy.oo}[node[1]]
    if kind == "f":
        name = {"arcsin": "asin", "arccos": "acos", "arctan": "atan"}.get(node[1], node[1])
        return getattr(sympy, name)(args[1])
    ops = {"+": lambda a, b: a + b, "*": lambda a, b: a * b, "/": lambda a, b: a / b, "neg": lambda a: -a,
           "^": lambda a, b: a ** b, "!": sympy.factorial, "binom": sympy.binomial, "abs": sympy.Abs,
           "floor": sympy.floor, "ceil": sympy.ceiling, "log": lambda a, b: sympy.log(a, b) if b is not None else sympy.log(a),
           "root": lambda a, n: sympy.real_root(a, n) if n.is_odd else sympy.root(a, n)}
    return ops[kind](*args)


def _sympy_equal(p, g, mode: str) -> bool:
    """Stage 2, run inside the child: simplify(pred - gold) == 0 (equations: a constant nonzero ratio)."""
    import sympy
    parsed = [_equation(*x) if mode == "eq" else _parse(x) for x in (p, g)]
    a, b = (_sympy_tree(x[0]) for x in parsed)
    if mode == "eq":
        ratio = sympy.simplify(a / b)
        return bool(ratio.is_number and ratio != 0 and ratio.is_finite)
    diff = sympy.simplify(a - b)
    if diff == 0:
        return True
    if diff.free_symbols or not diff.is_finite:
        return False
    tol = _tolerance(parsed[0][1], parsed[1][1], bool(_INT.fullmatch(g)))
    return bool(abs(complex(sympy.N(diff, 30))) <= tol * abs(complex(sympy.N(b, 30))))


# ----------------------------------------------------------------------------- child processes (sympy stage, batch workers)

class _Child:
    """A child `python reward.py --serve KIND` answering one JSON line per request line."""

    def __init__(self, kind: str):
        self.kind, self.proc, self.buffer, self.ready = kind, None, b"", False

    def start(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", self.kind],
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


_SYMPY_CHILD, _SCORE_CHILDREN, _LOCK, _POOL_LOCK = _Child("sympy"), [], threading.Lock(), threading.Lock()
atexit.register(lambda: [c.kill() for c in [_SYMPY_CHILD, *_SCORE_CHILDREN]])


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


# ----------------------------------------------------------------------------- reward

def overlong_penalty(length: int | None, max_len: int | None, cfg: RewardConfig) -> float:
    """DAPO soft overlong punishment (0 when length, max_len or cfg.overlong_buffer is not given)."""
    if not (length and max_len and cfg.overlong_buffer):
        return 0.0
    if cfg.overlong_buffer >= max_len:
        raise ValueError(f"RewardConfig.overlong_buffer ({cfg.overlong_buffer}) must be smaller than max_len ({max_len})")
    start = max_len - cfg.overlong_buffer
    return -cfg.overlong_factor * min(max(length - start, 0), cfg.overlong_buffer) / cfg.overlong_buffer


def math_reward(response: str, gold: str, cfg: RewardConfig = RewardConfig(), response_len: int | None = None,
                max_len: int | None = None, multiple_answers: bool = False) -> RewardResult:
    answer = extract_answer(response, cfg.fallbacks)
    correct, timed_out = _equiv(answer, gold, cfg.timeout, multiple_answers) if answer is not None else (False, False)
    score = float(correct) - (cfg.format_penalty if answer is None else 0.0) + overlong_penalty(response_len, max_len, cfg)
    return RewardResult(score, answer, correct, answer is not None, timed_out)


def score_batch(responses: list[str], golds: list[str], cfg: RewardConfig = RewardConfig(), workers: int = 0,
                response_lens=None, max_len=None, multiple_answers=None) -> list[RewardResult]:
    """math_reward over a batch, in `workers` child processes (0: in this process)."""
    n = len(responses)
    lens, multi = response_lens or [None] * n, multiple_answers or [False] * n
    if not len(golds) == len(lens) == len(multi) == n:
        raise ValueError(f"score_batch: {n} responses but {len(golds)} golds, {len(lens)} response_lens, "
                         f"{len(multi)} multiple_answers")
    items = list(zip(responses, golds, lens, multi))
    if workers <= 0 or n < 2:
        return [math_reward(r, g, cfg, length, max_len, m) for r, g, length, m in items]
    size = -(-n // workers)
    chunks = [items[i:i + size] for i in range(0, n, size)]
    results = []
    with _POOL_LOCK:
        while len(_SCORE_CHILDREN) < workers:
            _SCORE_CHILDREN.append(_Child("score"))
        sent = [child.send({"cfg": asdict(cfg), "max_len": max_len, "items": chunk})
                for child, chunk in zip(_SCORE_CHILDREN, chunks)]
        for child, chunk, ok in zip(_SCORE_CHILDREN, chunks, sent):
            reply = child.receive(len(chunk) * (cfg.timeout + 0.5) + STARTUP_TIMEOUT) if ok else None
            if isinstance(reply, list) and len(reply) == len(chunk):
                remote = [RewardResult(**r) for r in reply]
                STATS["timeouts"] += sum(r.timed_out for r in remote)  # counted in the worker, reported here
                results += remote
            else:  # the worker died, stalled or failed: score its chunk here
                print(f"reward.py: a score worker failed; scoring {len(chunk)} responses in process", file=sys.stderr)
                child.kill()
                results += [math_reward(r, g, cfg, length, max_len, m) for r, g, length, m in chunk]
    return results


def _serve(kind: str):
    """Child process loop: one JSON request per stdin line, one JSON reply per stdout line."""
    try:  # Linux: die with the parent, even inside a C-level computation
        import ctypes
        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass
    if kind == "sympy":
        import sympy  # noqa: F401  (imported before announcing readiness, so no check pays for it)
    sys.stdout.write("ready\n"); sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if kind == "sympy":
                reply = _sympy_equal(*request)
            else:
                cfg = RewardConfig(**request["cfg"])
                reply = [asdict(math_reward(r, g, cfg, length, request["max_len"], m)) for r, g, length, m in request["items"]]
        except Exception:
            reply = False
        sys.stdout.write(json.dumps(reply) + "\n"); sys.stdout.flush()


# ----------------------------------------------------------------------------- command line

def _bench_mix(root: str) -> tuple[list[str], list[str], list[bool]]:
    """Responses for the golds of data/math500 and data/gsm8k_test: the reference solution's text
    (boxes removed) then a boxed answer that is the gold, a reformatted gold, or a wrong number; some unboxed."""
    responses, golds, expected = [], [], []
    for name in ("math500", "gsm8k_test"):
        for k, line in enumerate(open(os.path.join(root, "data", f"{name}.jsonl"))):
            row = json.loads(line)
            gold, reasoning = row["answer"], row.get("solution", "")[:1500].replace("\\boxed", "")
            wrong = re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), gold, count=1) if re.search(r"\d", gold) else "0"
            spaced = gold.replace("\\frac", "\\dfrac").replace(",", ", ") if _INT.fullmatch(gold) is None else f"{int(gold):,}"
            for answer, ok in [(gold, True), (spaced, True), (f"${gold}$", True), (wrong, False), (f"-{wrong}", False)]:
                responses.append(f"{reasoning}\nThe answer is \\boxed{{{answer}}}.")
                golds.append(gold)
                expected.append(ok)
            responses.append(f"{reasoning}\nThe answer is {gold}.")
            golds.append(gold)
            expected.append(False)
    return responses, golds, expected


def bench(cfg: RewardConfig, workers: int):
    responses, golds, expected = _bench_mix(os.path.dirname(os.path.abspath(__file__)))
    latencies, results = [], []
    start = time.perf_counter()
    for response, gold in zip(responses, golds):
        t = time.perf_counter()
        results.append(math_reward(response, gold, cfg))
        latencies.append(time.perf_counter() - t)
    single = len(responses) / (time.perf_counter() - start)
    agree = sum(r.correct == e for r, e in zip(results, expected)) / len(expected)
    print(f"realistic mix: {len(responses)} checks (math500 + gsm8k_test golds x 6 responses), "
          f"verdicts as constructed: {agree:.1%}")
    print(f"single process: {single:,.0f} checks/s   latency p50 {sorted(latencies)[len(latencies) // 2] * 1e3:.3f} ms"
          f"  p99 {sorted(latencies)[int(len(latencies) * 0.99)] * 1e3:.3f} ms  worst {max(latencies) * 1e3:.1f} ms")
    worst = max(range(len(latencies)), key=latencies.__getitem__)
    print(f"  worst case: answer {results[worst].answer!r} vs gold {golds[worst]!r}   stats {STATS}")
    _parse.cache_clear(), _clean.cache_clear(), _structure.cache_clear()
    if workers > 0:
        score_batch(responses[:workers * 2], golds[:workers * 2], cfg, workers=workers)  # start the workers
        start = time.perf_counter()
        results = score_batch(responses, golds, cfg, workers=workers)
        rate = len(responses) / (time.perf_counter() - start)
        print(f"{workers} workers: {rate:,.0f} checks/s ({rate / workers:,.0f} per worker; {os.cpu_count()} cores here)")
    adversarial = ["9^{9^{9^{9}}}", "1000000!", "{" * 25000 + "}" * 25000, "\\frac{\\sqrt{", "2^{2^{2^{2^{2^{2}}}}}"]
    for answer in adversarial:
        t = time.perf_counter()
        result = math_reward(f"\\boxed{{{answer}}}", "3", cfg)
        print(f"adversarial {answer[:24]!r:28} -> correct={result.correct} timed_out={result.timed_out} "
              f"in {time.perf_counter() - t:.3f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("response", nargs="?", help="model response (its last \\boxed{} is the answer)")
    parser.add_argument("gold", nargs="?", help="gold answer")
    parser.add_argument("--multiple-answers", action="store_true", help="gold is a list of answers in any order")
    parser.add_argument("--bench", action="store_true", help="measure checks/s and latency on a realistic mix")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for the --bench batch run")
    parser.add_argument("--serve", choices=("sympy", "score"), help=argparse.SUPPRESS)
    add_dataclass_args(parser, RewardConfig)
    args = parser.parse_args(argv)
    if args.serve:
        return _serve(args.serve)
    try:
        cfg = dataclass_from_args(RewardConfig, args)
    except ValueError as e:
        parser.error(str(e))
    if args.bench:
        return bench(cfg, args.workers)
    if args.response is None or args.gold is None:
        parser.error("give a response and a gold answer (or --bench)")
    if (reason := validate_gold(args.gold)) is not None:
        print(f"warning: gold {args.gold!r} {reason}")
    result = math_reward(args.response, args.gold, cfg, multiple_answers=args.multiple_answers)
    print(f"answer: {result.answer}\ncorrect: {result.correct}\nscore: {result.score}\n"
          f"format_ok: {result.format_ok}\ntimed_out: {result.timed_out}")


if __name__ == "__main__":
    main()
