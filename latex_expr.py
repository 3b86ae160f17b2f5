"""LaTeX / plain math answer -> small expression tree; exact and float evaluation; sympy trees.

Self-contained (no sympy at import): a recursive-descent parser reads one answer atom (+ - * / ^ ! \\frac
\\sqrt \\binom \\lfloor \\lceil |.| functions, implicit multiplication; mixed numbers 1\\frac{4}{5}) into
a tuple tree, evaluated exactly in rationals (Fraction) where possible, else in complex floats; variables
are set to 3 fixed generic rationals (symbolic equality is equality at those points: sqrt(x^2) equals x
there). `e` is Euler's number and `i` the imaginary unit; a letter before a one-token parenthesis `u(t)`
is a function value, otherwise `x(x+1)` is a product. What it cannot decide (float overflow, division by
zero, infinities) raises _Undecided; answer_equiv.py then asks sympy, on trees built by _sympy_tree from
the same parse (sympy never parses text), in a child process.
`a:b` is the ratio a/b.
Numeric tolerance: |p - g| <= 1e-4 * max(|p|, |g|) when either side has a decimal or scientific literal
(rounded numbers: the Qwen2.5-Math evaluation's rel_tol), except that an integer gold needs an exactly
equal decimal (17.9999 is not 18) and an irrational exact gold (\\sqrt{2}, \\pi, no variables) needs a
decimal that agrees to 6 decimal places (1.414214, not 1.414 or 1.4142: math-verify's float_rounding);
otherwise exact for rationals and 1e-9 relative (+1e-12 absolute) for float round-off of exact expressions
(2\\sqrt{3} vs \\sqrt{12}); rounded numbers get no absolute slack (8.4e-12 is not 7.4e-12).
`_linear` reads a one-variable expression as a*v + b (answer_equiv.py solves relations with it).
"""
import cmath
import functools
import math
import re
from fractions import Fraction

REL_TOL = 1e-4           # relative tolerance when a rounded (decimal / scientific) number is involved
DECIMALS = 6             # a decimal answer to an irrational exact gold must agree to this many places
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
            elif t in ("/", "\\div", ":"):
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
    return abs(a - b) <= max(tol, FLOAT_TOL) * max(abs(a), abs(b)) + (1e-12 if tol == FLOAT_TOL else 0)


def _tolerance(p_approx: bool, g_approx: bool, exact_gold: bool) -> float:
    """Relative tolerance: none for a decimal against an integer gold, REL_TOL for rounded numbers."""
    return 0.0 if exact_gold and p_approx else REL_TOL if p_approx or g_approx else FLOAT_TOL


def _rounded_equal(a, b) -> bool:
    """Equal when rounded to DECIMALS places (real and imaginary parts)."""
    a, b = complex(a), complex(b)
    return round(a.real, DECIMALS) == round(b.real, DECIMALS) and round(a.imag, DECIMALS) == round(b.imag, DECIMALS)


def _values_equal(p, g, exact_gold: bool, proportional: bool, positive: bool = False) -> bool:
    """Evaluate both trees (at 3 generic points when they have variables); raises _Undecided.
    proportional: p = c * g for one constant c != 0 (c > 0 when `positive`: inequalities)."""
    (p_tree, p_approx, p_names), (g_tree, g_approx, g_names) = p, g
    tol = _tolerance(p_approx, g_approx, exact_gold)
    names = sorted(p_names | g_names)
    ratios = []
    for point in _POINTS[:3 if names or proportional else 1]:
        env = {name: point[j % len(point)] for j, name in enumerate(names)}
        a, b = _evaluate(p_tree, env), _evaluate(g_tree, env)
        if not names and not proportional and p_approx and not g_approx and not isinstance(b, Fraction):
            return _rounded_equal(a, b)  # a decimal for an irrational gold: 6 places, as math-verify
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
        return all(_close(r, ratios[0], tol) for r in ratios) and (not positive or _real(ratios[0]) > 0)
    return True


_LINE_POINTS = [Fraction(-3), Fraction(-137, 97), Fraction(0), Fraction(1), Fraction(229, 113), Fraction(5, 2)]


def _linear(parsed):
    """(name, a, b) with a != 0 rational when the one-variable expression is exactly a*name + b, else None."""
    tree, _, names = parsed
    if len(names) != 1:
        return None
    name = next(iter(names))
    try:
        values = [_evaluate(tree, {name: x}) for x in _LINE_POINTS]
    except _Undecided:
        return None
    if not all(isinstance(v, Fraction) for v in values):
        return None
    a = (values[3] - values[2]) / (_LINE_POINTS[3] - _LINE_POINTS[2])
    b = values[2]
    if a == 0 or any(v != a * x + b for v, x in zip(values, _LINE_POINTS)):
        return None
    return name, a, b


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
    parsed = [_equation(*x) if mode in ("eq", "ineq") else _parse(x) for x in (p, g)]
    a, b = (_sympy_tree(x[0]) for x in parsed)
    if mode in ("eq", "ineq"):  # inequalities: a positive ratio
        ratio = sympy.simplify(a / b)
        return bool(ratio.is_number and ratio != 0 and ratio.is_finite and (mode == "eq" or ratio.is_positive))
    diff = sympy.simplify(a - b)
    if diff == 0:
        return True
    if diff.free_symbols or not diff.is_finite:
        return False
    if parsed[0][1] and not parsed[1][1] and not b.free_symbols and b.is_rational is False:
        return _rounded_equal(sympy.N(a, 30), sympy.N(b, 30))
    tol = _tolerance(parsed[0][1], parsed[1][1], bool(_INT.fullmatch(g)))
    # sympy's own numbers: complex() overflows to inf for values like 2^2000 sqrt 2, and inf <= tol * inf is True
    return bool(abs(sympy.N(diff, 30)) <= tol * abs(sympy.N(b, 30)))
