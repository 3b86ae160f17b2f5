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
   intervals (relation_sets.py) and compared as sets, with math-verify's direction rule: a relation (or
   set-builder) gold accepts the relation, the set-builder or the intervals; an interval gold accepts a
   set-builder but not a bare relation (False). Other relations are True when the same up to a positive factor,
   else undecided. A mismatch of kinds is False only when every atom of both sides parses; anything unparsed is
   undecided.
2. sympy, for atoms stage 1 cannot evaluate (float overflow, division by zero, infinities): simplify(pred -
   gold) == 0 on trees built from the same parse (sympy never parses text).
3. math-verify 0.9.0 (with latex2sympy2_extended) on the raw strings, gold first, for what is still undecided
   (`x \\approx 11`, `\\mathbb{R}`, `a=5, b=1` vs `(a,b)=(5,1)`, nonlinear relations, \\sum ...); verdicts cached.
Stages 2 and 3 run in one killable child process with a hard time limit per comparison (verifier_child.py: the
child, its deadlines, the refusal of huge numbers and deep nesting, the counters in STATS, and what happens
without math-verify: undecided pairs are unequal, with one warning).
Why this split (measured on tests/verifier_forms.jsonl, 278 undisputed olympiad-form pairs, and `python reward.py
--bench`): math-verify alone (each string in $...$) agrees on 92.4% (257 / 278: it misreads `\\quad` separators,
set-builder, negated chains, swapped relations in t) and costs 1-450 ms a pair; the fast path alone agrees on 100%
of these and runs the bench mix (none of whose pairs needs math-verify) at ~20,000-23,000 checks/s on one core;
both: 100%. So the fast path decides what it reads with certainty, and math-verify is the fallback for forms outside
it, off the hot path and inside the killable child.
Deviations, deliberate: answers longer than 1000 characters are compared as exact strings only; 90^\\circ
is 90, not pi/2; 62.5% is 62.5 (not 0.625); an interval's infinite end is open whatever its bracket
([-\\infty, 0] = (-\\infty, 0], as math-verify); `52` matches a base-subscripted gold `52_8`; equations
with different left sides are equal when lhs - rhs are proportional; a pred equation between constants equals
a value only when true (`2^{10}=1024` is 1024, `1+1=5` is not 5, where math-verify takes the last side); with
multiple_answers (OlympiadBench) commas always separate answers (`1,250` is two answers). Expression rules and
tolerances: latex_expr.py.
"""
import functools
import re
import time

from latex_expr import _INT, _Undecided, _equation, _parse, _values_equal
from relation_sets import _relations, _sets_equal
from verifier_child import (STARTUP_TIMEOUT, STATS, _remote_math_verify, _remote_sympy,  # noqa: F401
                            prepare_child, serve_request)  # re-exported (reward.py, tests)

MAX_ANSWER_CHARS = 1000  # longer answers: exact string comparison only (bounds every regex and the parser)


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
        verdict = _sets_equal(p, g)  # relation_sets.py
    except _Undecided:
        return None
    if verdict is not None:
        return verdict
    pr, gr = (x[2] if x[0] == "setb" else x for x in (p, g))
    if pr[0] != "rel" or gr[0] != "rel" or pr[1] != gr[1] or len(pr[2]) != len(gr[2]):
        return None
    if len(pr[2]) == 2:
        return _atom_equal(pr[2], gr[2], slow, "ineq" if pr[1][0] != "\\neq" else "eq") or None
    return _all(_atom_equal(a, b, slow) for a, b in zip(pr[2], gr[2])) or None


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


# ----------------------------------------------------------------------------- the three stages

_DOLLAR = re.compile(r"(?<!\\)\$")


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
        if verdict is None and not state["timed_out"]:  # math-verify reads the answers as written
            as_written = (_DOLLAR.sub("", pred.strip()), _DOLLAR.sub("", _unbox(gold.strip())))
            verdict = _remote_math_verify(*as_written, cleaned, state)
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
