"""Answer equivalence: `is_equiv(pred, gold)` and `validate_gold(gold)`, in three stages; each answers True, False
or undecided, and only undecided pairs go on.

1. In process, no sympy (~0.05 ms a check): normalise both strings (\\left/\\right, \\dfrac, spacing, $, \\%,
   degrees, \\text{} and trailing units incl. \\textnormal, thousands separators `10,\\!080` but never `45, 123`,
   a gold wholly in \\boxed{}, choice letters `(C)`, <= >= != \\lt \\ne ...), split the structure (tuples and
   intervals: order and brackets matter; sets, lists (`,` `;` `\\quad` `or` `and` `\\text{ and }` all separate),
   unions, `\\pm`: order does not; pmatrix/bmatrix/array; `-(a, b)` is (-a, -b); equations; relations,
   `m \\in [a, b)` and set-builder `\\{x \\mid ...\\}`), then parse and evaluate each atom with latex_expr.py.
   Labelled answers equal the bare value when the label has only names: `(a,b)=(5,1)`, `|PQ| = 4`,
   `S_1:S_2 = 3:8`, `f(x) = ..`.
   Relations in one variable v whose middle is a*v + b or |a*v + b| (a rational; `-y > -4`, `7 \\geq y`,
   `-3 \\le t \\le 8`, `2 \\le |w| \\le 5/2`, `x \\neq 3`, `x < 1 or x > 2`) are solved exactly to unions of
   intervals and compared as sets, with math-verify's direction rule: a relation (or set-builder) gold
   accepts the relation, the set-builder or the intervals; an interval gold accepts a set-builder but not a
   bare relation (False). Other relations are True when the same up to a positive factor, else undecided.
   A mismatch of kinds is False only when every atom of both sides parses; anything unparsed is undecided.
2. sympy, for atoms stage 1 cannot evaluate (float overflow, division by zero, infinities): simplify(pred -
   gold) == 0 on trees built from the same parse (sympy never parses text).
3. math-verify 0.9.0 (with latex2sympy2_extended) on the raw strings, gold first, for what is still undecided
   (`x \\approx 11`, `\\mathbb{R}`, `a=5, b=1` vs `(a,b)=(5,1)`, nonlinear relations, \\sum ...); verdicts cached.
Stages 2 and 3 run in one child process `python reward.py --serve sympy` (sympy and math-verify imported there,
never in the trainer): SIGALRM interrupts Python-level work at the comparison's deadline and the child lives
on; a C-level hang (a bignum power) is killed by the parent at the deadline and the child restarted. Numbers
over 10^6 bits (9^{9^{9^9}}, 1000000!) and brackets nested deeper than 50 are refused (unequal) before either
library sees them. Timeouts, refusals and calls are counted in STATS. Without math-verify (the GPU box: torch,
transformers, numpy, sympy only) stage 3 is skipped with one warning: undecided pairs are unequal.
Why this split (measured on tests/verifier_forms.jsonl, 274 undisputed olympiad-form pairs, and `python reward.py
--bench`): math-verify alone agrees on 92.7% (it misreads `\\quad` separators, set-builder, negated chains,
swapped relations in t) and costs 1-400 ms a pair; the fast path alone agrees on 100% of these and runs the bench
mix (none of whose pairs needs math-verify) at ~20,000 checks/s on one core (~25,000 before these rules); both:
100%. So the fast path decides what it reads with certainty, and math-verify is the fallback for forms outside
it, off the hot path and inside the killable child.
Deviations, deliberate: answers longer than 1000 characters are compared as exact strings only; 90^\\circ
is 90, not pi/2; 62.5% is 62.5 (not 0.625); an interval's infinite end is open whatever its bracket
([-\\infty, 0] = (-\\infty, 0], as math-verify); `52` matches a base-subscripted gold `52_8`; equations
with different left sides are equal when lhs - rhs are proportional; a pred equation between constants equals
a value only when true (`2^{10}=1024` is 1024, `1+1=5` is not 5, where math-verify takes the last side); with
multiple_answers (OlympiadBench) commas always separate answers (`1,250` is two answers). Expression rules and
tolerances: latex_expr.py.
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
from fractions import Fraction

from latex_expr import (_INT, _Undecided, _equation, _evaluate, _linear, _log2_bound, _parse, _real, _sympy_equal,
                        _values_equal)

MAX_ANSWER_CHARS = 1000  # longer answers: exact string comparison only (bounds every regex and the parser)
MAX_SYMPY_BITS = 1e6     # numbers bigger than this are never built by sympy: judged unequal
STARTUP_TIMEOUT = 60.0   # seconds a child process may take to start (not counted in a comparison)
STATS = {"sympy_calls": 0, "math_verify_calls": 0, "timeouts": 0, "refused": 0, "child_failures": 0}  # counters
_REWARD_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reward.py")  # children run its --serve


# ----------------------------------------------------------------------------- normalisation

_UNICODE = str.maketrans({"−": "-", "–": "-", "×": "\\times ", "÷": "\\div ", "·": "\\cdot ", "π": "\\pi ",
                          "√": "\\sqrt", "∞": "\\infty ", "°": "^\\circ", "≤": "\\le ", "≥": "\\ge ",
                          "≠": "\\ne ", "∪": "\\cup ", "∈": "\\in ", "\u2009": " ", "\u00a0": " ", "\n": " ", "\t": " "})
_SUBS = [(re.compile(p), r) for p, r in [
    (r"(?<!\\)\$", ""), (r"^\\[(\[]\s*(.*?)\s*\\[)\]]\.?$", r"\1"),  # $..$, \(..\), \[..\]
    (r"\\(?:left|right)\.|\\(?:left|right|[bB]igg?[lr]?|displaystyle)(?![a-zA-Z])", ""),
    (r"\\varnothing(?![a-zA-Z])|\\\{\s*\\\}", r"\\emptyset"),
    (r"\\q?quad(?![a-zA-Z])", ","), (r"\\[,;:! ]|~", " "), (r"\\[dtc]frac", r"\\frac"), (r"\{,\}", ","), (r";", ","),
    (r"\\(?:le|leqq|leqslant)(?![a-zA-Z])|<=|\u2a7d", r"\\leq"),
    (r"\\(?:ge|geqq|geqslant)(?![a-zA-Z])|>=|\u2a7e", r"\\geq"),
    (r"\\ne(?![a-zA-Z])|!=|\\not\s*=", r"\\neq"), (r"\\lt(?![a-zA-Z])", "<"), (r"\\gt(?![a-zA-Z])", ">"),
    (r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree", ""), (r"_\{(\w)\}", r"_\1"),
    (r",?\s*\\(?:text|textrm|textnormal|mbox|mathrm)\s*\{\s*,?\s*(?:or|and)\s*\}\s*,?", ","),
    (r"^(.*[^\s{_^])\s*\\(?:text|textnormal|textrm|mbox|mathrm)\s*\{\s*~?[a-zA-Z][a-zA-Z ./]*\}\s*(?:\^\s*\{?\d\}?)?$",
     r"\1"),  # a trailing unit: "5 \text{ km}", "864 \mbox{ inches}^2", "10 \text{m/s}"
    (r"\\(?:text|textbf|textit|textrm|textnormal|textsf|textup|mbox|mathrm|mathbf|mathit|mathsf|operatorname|"
     r"boldsymbol)\s*\{([^{}]*)\}", r"\1"),
    (r",?\s+(?:and|or)\s+", ","),  # "x = 1 or x = 2", "12, 31, and 40"
    (r"^([-+]?[\d.,]*\d|\\frac\{[^{}]*\}\{[^{}]*\})\s+(?:[a-zA-Z]{3,}|cm|mm|km|ft|in|kg|mi|[a-zA-Z]+/[a-zA-Z]+)"
     r"(?:\s+[a-zA-Z]+)*"
     r"(?:\^\s*\{?\d\}?)?\s*$", r"\1"),  # bare unit words after a number: "18 dollars", "15 cm^2"
    (r"\\?[%$]", ""), (r"\\\{", "\x01"), (r"\\\}", "\x02"),
    (r"(\\[a-zA-Z]+) +(?=[a-zA-Z])", "\\1\x00"), (r" +", ""), (r"\x00", " "),  # keep `\pi r` apart
    (r"^[a-zA-Z]\\in", ""), (r"\.$", ""), (r"^\(([A-E])\)$", r"\1"), (r",,+", ","), (r"^,|,$", "")]]
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_LIST_COMMA = re.compile(r",\s+\d")  # "45, 123" is a list of two numbers, never 45123
_BOX_OPEN = re.compile(r"\$*\s*\\(?:boxed|fbox)\s*\{")


def _unbox(s: str) -> str:
    """The content of an answer that is wholly one \\boxed{...} / $\\boxed{...}$ (a gold written that way)."""
    while (m := _BOX_OPEN.match(s)) and (end := re.sub(r"[\s.$]+$", "", s)).endswith("}"):
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


_MEMBER = re.compile(r"(.+?)\\in(?![a-zA-Z])(.+)")


def _membership(s: str) -> tuple | None:
    """`m \\in [a, b)` as the relation a \\leq m < b (an infinite end drops its side)."""
    if not (m := _MEMBER.fullmatch(s)) or (interval := _structure(m.group(2)))[0] != "seq" or len(interval[2]) != 2:
        return None
    (lo, hi), brackets = (x[1] for x in interval[2]), interval[1]
    ops = ["\\leq" if brackets[0] == "[" else "<", "\\leq" if brackets[1] == "]" else "<"]
    sides = [lo, m.group(1).strip(), hi]
    if hi.lstrip("+") == "\\infty":
        ops, sides = ops[:1], sides[:2]
    if lo == "-\\infty":
        ops, sides = ops[-1:], sides[-2:]
    return ("rel", tuple(ops), tuple(sides)) if ops else None


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
        rows = [row for row in m.group(1).split("\x03") if row]
        return ("matrix", tuple(tuple(_structure(c) for c in row.split("&")) for row in rows))
    if len(parts := _split_top(s, "\\cup")) > 1:
        return ("union", tuple(_structure(p) for p in parts))
    if len(parts := _split_top(s, ",")) > 1 or len(_split_top(s, "\\pm")) == 2:
        return ("list", tuple(_items(parts)))
    if s[:1] == "\x01" and _wrapped(s) and (builder := _set_builder(s[1:-1])):
        return builder
    if _wrapped(s) and len(parts := _split_top(s[1:-1], ",")) > 1 or s[:1] == "\x01" and _wrapped(s):
        parts = _split_top(s[1:-1], ",")
        if s[0] in "\x01{":  # `{-1, 1}`: braces around a list are a set
            return ("set", tuple(_items(parts)))
        brackets = ("(" if parts[0] == "-\\infty" else s[0]) + (")" if parts[-1].lstrip("+") == "\\infty" else s[-1])
        return ("seq", brackets, tuple(_structure(p) for p in parts))  # [-\infty,0] = (-\infty,0]
    if rel := _relation(s) or _membership(s):
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
    """Is `lhs = value` a labelled value: names, no numbers (`(a,b)`, `|PQ|`, `S_1:S_2`, `\\frac{AM}{MC}`, `f(x)`)?"""
    if _wrapped(lhs) and lhs[0] == "(" and len(parts := _split_top(lhs[1:-1], ",")) > 1:
        return all(_label(p) for p in parts)
    parsed = _parse(lhs.replace("\\angle", ""))
    return parsed is not None and bool(parsed[2]) and not _has_number(parsed[0])


def _has_number(tree) -> bool:
    return tree[0] == "n" or any(_has_number(c) for c in tree[1:] if isinstance(c, tuple))


# ----------------------------------------------------------------------------- relations as sets of one variable
# An interval is (lo, lo_closed, hi, hi_closed) with lo / hi parsed constants or None (infinite); a set is a tuple
# of disjoint intervals. A relation whose middle is m = a*v + b or |a*v + b| (a rational) has an exact set in v.

_ZERO = (("n", Fraction(0)), False, frozenset())


def _sign(end) -> int:
    value = _real(_evaluate(end[0], {}))
    return (value > 0) - (value < 0)


def _solve(interval, a: Fraction, b: Fraction):
    """{v : a*v + b in interval}."""
    lo, lo_closed, hi, hi_closed = interval
    at = lambda end: None if end is None else (("/", ("+", end[0], ("n", -b)), ("n", a)), end[1], frozenset())
    return (at(lo), lo_closed, at(hi), hi_closed) if a > 0 else (at(hi), hi_closed, at(lo), lo_closed)


def _abs_preimage(interval) -> list:
    """{L : |L| in interval} as one or two intervals (raises _Undecided when an end has no sign)."""
    lo, lo_closed, hi, hi_closed = interval
    neg = lambda end: None if end is None else (("neg", end[0]), end[1], frozenset())
    if hi is not None and _sign(hi) <= 0 or hi is None and lo is None:
        raise _Undecided  # empty or everything: not an answer form worth a rule
    if lo is None or _sign(lo) < 0 or _sign(lo) == 0 and lo_closed:
        return [(neg(hi), hi_closed, hi, hi_closed)]
    return [(neg(hi), hi_closed, neg(lo), lo_closed), (lo, lo_closed, hi, hi_closed)]


def _relation_set(rel: tuple):
    """(name, set) of a one-variable relation `m op c`, `c op m`, `c1 op m op c2`, `m \\neq c`, `l op r`, else None."""
    ops, sides = rel[1], rel[2]
    parsed = [_parse(x) for x in sides]
    if None in parsed or len(sides) not in (2, 3) or len(sides) == 3 and "\\neq" in ops:
        return None
    if any(op not in ("<", "\\leq", "\\neq") for op in ops) or len(sides) == 3 and (parsed[0][2] or parsed[2][2]):
        return None
    closed = [op == "\\leq" for op in ops]
    if len(sides) == 3:
        middle, ranges = parsed[1], [(parsed[0], closed[0], parsed[2], closed[1])]
    elif parsed[0][2] and parsed[1][2]:
        middle, bound, at_right = _equation(*sides), _ZERO, True  # l op r: l - r op 0
    else:
        at_right = not parsed[1][2]
        middle, bound = (parsed[0], parsed[1]) if at_right else (parsed[1], parsed[0])
    if len(sides) == 2:
        below, above = (None, False, bound, closed[0]), (bound, closed[0], None, False)
        ranges = [below, above] if ops[0] == "\\neq" else [below if at_right else above]
    if middle[0][0] == "abs":
        ranges, middle = [piece for r in ranges for piece in _abs_preimage(r)], (middle[0][1], middle[1], middle[2])
    if (line := _linear(middle)) is None:
        return None
    name, a, b = line
    return name, tuple(_solve(r, a, b) for r in ranges)


def _seq_interval(s: tuple):
    """An interval `(a, b]` with constant ends, else None."""
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
    return tuple(ends)


def _solution_set(s: tuple):
    """(name or None, set) of a relation, a set-builder, an interval or a union of intervals; else None."""
    if s[0] == "rel":
        return _relation_set(s)
    if s[0] == "setb":
        found = _relation_set(s[2])
        return found if found and found[0] == s[1] else None
    if _relations(s):  # `x < 1 \\text{ or } x > 2`: the union
        found = [_relation_set(x) for x in s[1]]
        if None in found or len({name for name, _ in found}) > 1:
            return None
        return found[0][0], tuple(interval for _, intervals in found for interval in intervals)
    intervals = [_seq_interval(x) for x in (s[1] if s[0] == "union" else [s])]
    return None if None in intervals else (None, tuple(intervals))


def _relations(s: tuple) -> bool:
    """A relation, a set-builder or a list of relations (read as their union)."""
    return s[0] in ("rel", "setb") or s[0] == "list" and all(x[0] == "rel" for x in s[1])


def _intervals_equal(p, g) -> bool:
    if (p[0] is None) != (g[0] is None) or (p[2] is None) != (g[2] is None) or (p[1], p[3]) != (g[1], g[3]):
        return False
    return all(_values_equal(a, b, False, False) for a, b in ((p[0], g[0]), (p[2], g[2])) if a)


def _compare_relations(p: tuple, g: tuple, slow) -> bool | None:
    """A relation gold accepts the same relation, its intervals or set-builder form; an interval gold accepts a
    set-builder pred (both are sets) but not a bare relation (math-verify's direction rule). Relations with exact
    solution sets compare as sets; others are equal when the same up to a positive factor (2 sides) or side by
    side (chains), else undecided."""
    if g[0] in ("seq", "union") and p[0] != "setb" or "atom" in (p[0], g[0]) and _known(p if p[0] == "atom" else g):
        return False  # a relation is neither a number nor an expression (math-verify: never equal)
    if not _relations(g) and g[0] not in ("seq", "union"):
        return None
    try:
        ps, gs = _solution_set(p), _solution_set(g)
        if ps and gs and (ps[0] is None or gs[0] is None or ps[0] == gs[0]):
            free = list(ps[1])
            for interval in gs[1]:
                match = next((k for k, x in enumerate(free) if _intervals_equal(x, interval)), None)
                if match is None:
                    return False
                free.pop(match)
            return not free
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
    return False if eq is g and p[0] == "atom" and _known(p) else None  # an equation to solve is not a value


def _compare(p: tuple, g: tuple, slow) -> bool | None:
    """Tri-state structural comparison (None: the fast path cannot tell); `slow(p, g, mode)` (sympy) settles
    atoms whose evaluation is undecided when given."""
    if p == g:
        return True
    if _relations(p) or _relations(g):
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


# ----------------------------------------------------------------------------- child processes (sympy, math-verify)

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
_PIECES = re.compile(r"\\approx|\\sim|\\leq|\\geq|\\neq|\\in|\\cup|\\pm|\\mid|[<>=,:|\x01\x02]")
MAX_DEPTH = 50  # brackets nested deeper than this are never handed to math-verify (its parser recurses)


def _hostile(text: str) -> bool:
    """Would math-verify be handed a number beyond MAX_SYMPY_BITS (in any piece between relations and
    separators) or brackets nested deeper than MAX_DEPTH? (Its sympy could hang in C: refused, not equal.)"""
    depth = deepest = 0
    for c in text:
        depth += (c in _OPEN) - (c in _CLOSE)
        deepest = max(deepest, depth)
    if deepest > MAX_DEPTH:
        return True
    parsed = (_parse(piece.strip()) for piece in _PIECES.split(text) if piece.strip())
    return any(x is not None and _log2_bound(x[0]) > MAX_SYMPY_BITS for x in parsed)


def _remote_math_verify(pred: str, gold: str, cleaned: tuple, state: dict) -> bool:
    """math-verify's verdict (gold first: it is asymmetric), computed in the child; cached by (pred, gold)."""
    key = (_DOLLAR.sub("", pred.strip()), _DOLLAR.sub("", _unbox(gold.strip())))
    if key in _MATH_VERIFY["cache"]:
        return _MATH_VERIFY["cache"][key]
    if any(_hostile(x) for x in cleaned):
        STATS["refused"] += 1
        return False
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
        cleaned, (p, g) = (p, g), (_structure(p), _structure(g))
        verdict = _compare(p, g, None)
        if verdict is not None:
            return verdict, False
        state = {"deadline": time.monotonic() + timeout, "timed_out": False}
        verdict = _compare(p, g, lambda a, b, mode: not state["timed_out"] and _remote_sympy(a, b, mode, state))
        if verdict is None and not state["timed_out"]:
            verdict = _remote_math_verify(pred, gold, cleaned, state)
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
