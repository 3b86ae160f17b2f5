"""Cases for tests/test_reward.py: a hand-labelled table, and a corpus built from the golds in data/
with equivalent and non-equivalent rewritings (labelled by math-verify in the test, not by us)."""
import json
import os
import re

B = "\\boxed{%s}"  # most rows only need the answer boxed

# (response, gold, expected). Expected values are by hand, from the rule named in each block.
CASES = [
    # --- extraction: last box counts, nested braces, \boxed 5, \fbox, empty / unclosed boxes, text after
    ("so \\boxed{3} wait, actually \\boxed{5}", "5", True),
    ("so \\boxed{3} wait, actually \\boxed{5}", "3", False),
    ("\\boxed{\\frac{1}{2}} and more text after the box.", "1/2", True),
    ("$\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\frac{\\sqrt3}{2}", True),
    ("The answer is \\boxed 5.", "5", True),
    ("The answer is \\boxed 5", "6", False),
    ("\\fbox{7}", "7", True),
    ("\\boxed{}", "0", False),
    ("\\boxed{  }", "0", False),
    ("\\boxed{4} then \\boxed{5", "4", False),       # the last box is unclosed: no answer, not the earlier box
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}", True),       # escaped braces do not close the box
    ("\\boxed{\\boxed{12}}", "12", True),
    ("The answer is 42.", "42", False),             # no box and no fallbacks: no answer
    ("2 + 2 = 4", "4", False),                      # never a guess from the last number
    ("\\boxed{x}", "x", True),
    ("\\boxed{\\text{(C)}}", "\\text{(C)}", True),
    # --- integers, adversarial near-misses
    (B % "3", "3", True), (B % "13", "3", False), (B % "3", "13", False), (B % "30", "3", False),
    (B % "-3", "3", False), (B % "03", "3", True), (B % "+3", "3", True), (B % "3.0", "3", True),
    (B % "3.00001", "3", False), (B % "2.9999", "3", False), (B % "\\frac{6}{2}", "3", True),
    (B % "1000001", "1000000", False), (B % "204", "204", True), (B % "0", "0", True), (B % "-0", "0", True),
    (B % "18", "18", True), (B % "18 dollars", "18", True), (B % "\\$18", "18", True), (B % "18.00", "18", True),
    (B % "1.8e1", "18", True), (B % "19", "18", False),
    # --- thousands separators
    (B % "10080", "10,\\!080", True), (B % "10,080", "10080", True), (B % "10{,}080", "10080", True),
    (B % "10\\,080", "10080", True), (B % "11111111100", "11,\\! 111,\\! 111,\\! 100", True),
    (B % "32348", "\\$32,\\!348", True), (B % "32,349", "32348", False), (B % "58,500", "58500", True),
    # --- decimals vs fractions
    (B % "0.5", "\\frac12", True), (B % "\\frac{1}{2}", "0.5", True), (B % "\\dfrac{1}{2}", "\\frac{1}{2}", True),
    (B % "\\tfrac12", "1/2", True), (B % ".5", "0.5", True), (B % "1/2", "\\frac{1}{2}", True),
    (B % "\\frac{2}{4}", "\\frac{1}{2}", True), (B % "0.25", "\\frac{1}{2}", False), (B % "\\frac{1}{3}", "\\frac{1}{2}", False),
    (B % "\\frac 59", "\\frac{5}{9}", True), (B % "\\frac43", "\\frac{4}{3}", True), (B % "\\frac9{19}", "\\frac{9}{19}", True),
    (B % "\\frac{270}{7}", "\\frac{270}7", True), (B % "0.33", "\\frac{1}{3}", False), (B % "0.333333", "\\frac{1}{3}", True),
    (B % "1.25", "\\frac{5}{4}", True), (B % "1.26", "\\frac{5}{4}", False), (B % "\\frac{9}{5}", "1\\frac{4}{5}", True),
    (B % "\\frac{4}{5}", "1\\frac{4}{5}", False), (B % "137.5", "137 \\frac{1}{2}", True), (B % "-\\frac{3}{8}", "-\\frac{3}{8}", True),
    (B % "\\frac{-3}{8}", "-\\frac{3}{8}", True), (B % "\\frac{3}{8}", "-\\frac{3}{8}", False), (B % "-0.375", "-\\frac{3}{8}", True),
    # --- numeric tolerance on rounded numbers (rel 1e-4)
    (B % "1.6", "1.6", True), (B % "1.60", "1.6", True), (B % "1.62", "1.6", False), (B % "1.60001", "1.6", True),
    (B % "4.5\\times 10^{33}", "4.5e33", True), (B % "4.5 \\cdot 10^{33}", "4.5e33", True), (B % "4.49e33", "4.5e33", False),
    (B % "4.5e34", "4.5e33", False), (B % "3\\times10^{8}", "3e8", True), (B % "1\\times 10^{-5}", "1e-5", True),
    (B % "0.00001", "1e-5", True), (B % "8.4e-12", "7.4e-12", False), (B % "7.40001e-12", "7.4e-12", True), (B % "6.72\\times10^{-5}", ".0000672", True), (B % "2.7778\\times10^{-6}", "2.7778e-6", True),
    # --- \left \right, \text, units, degrees, percent, dollars
    (B % "(3,\\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    (B % "\\left(3, \\frac{\\pi}{2}\\right)", "(3,\\frac{\\pi}{2})", True),
    (B % "(3,\\pi)", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    (B % "5.4", "5.4 \\text{ cents}", True), (B % "5.4 \\text{ cents}", "5.4", True), (B % "5.5", "5.4 \\text{ cents}", False),
    (B % "\\frac{270}{7}", "\\frac{270}7\\text{ degrees}", True), (B % "864", "864 \\mbox{ inches}^2", True),
    (B % "15 cm^2", "15\\mbox{ cm}^2", True), (B % "90", "90^\\circ", True), (B % "90^{\\circ}", "90", True),
    (B % "90°", "90^\\circ", True), (B % "45^\\circ", "90^\\circ", False), (B % "62.5", "62.5%", True),
    (B % "62.5\\%", "62.5%", True), (B % "8", "8 \\%", True), (B % "9\\%", "8 \\%", False), (B % "18.90", "\\$18.90", True),
    (B % "\\$36", "\\$36", True), (B % "\\text{36}", "36", True),
    # --- pi and radicals
    (B % "\\pi", "\\pi", True), (B % "3.14", "\\pi", False), (B % "3.14159", "\\pi", False),
    (B % "3.141593", "\\pi", True),  # a decimal for an irrational gold: 6 places (3.1415926.. rounds to 3.141593) (B % "2\\sqrt{3}", "\\sqrt{12}", True),
    (B % "\\sqrt{12}", "2\\sqrt{3}", True), (B % "3\\sqrt{3}", "\\sqrt{12}", False), (B % "11\\sqrt{2}", "11\\sqrt2", True),
    (B % "\\sqrt{242}", "11\\sqrt2", True), (B % "\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}", True),
    (B % "\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{3}", False), (B % "288\\pi", "288 \\pi", True), (B % "\\pi \\cdot 288", "288 \\pi", True),
    (B % "18+2\\pi", "18+2\\pi", True), (B % "2\\pi+18", "18+2\\pi", True), (B % "18+\\pi", "18+2\\pi", False),
    (B % "\\sqrt[3]{7}", "7^{1/3}", True), (B % "\\frac{8}{\\sqrt[3]{7}}", "\\frac{8}{\\sqrt[3]{7}}", True), (B % "\\sqrt[3]{-8}", "-2", True),
    (B % "2^{1009}", "2^{1009}", True), (B % "2\\cdot 2^{1008}", "2^{1009}", True), (B % "2^{1008}", "2^{1009}", False),
    (B % "4^{1/2}", "2", True), (B % "8^{2/3}", "4", True),
    # --- complex numbers
    (B % "6-5i", "6 - 5i", True), (B % "-5i+6", "6 - 5i", True), (B % "6+5i", "6 - 5i", False), (B % "1+274i", "1+274i", True),
    (B % "-2+7i", "-2 + 7i", True), (B % "1-12i", "1 - 12i", True), (B % "1+12i", "1 - 12i", False),
    # --- ordered tuples: order and length matter
    (B % "(6,31,-1)", "(6,31,-1)", True), (B % "(6, 31, -1)", "(6,31,-1)", True), (B % "(31,6,-1)", "(6,31,-1)", False),
    (B % "(6,31)", "(6,31,-1)", False), (B % "(-2,1)", "(-2,1)", True), (B % "(1,-2)", "(-2,1)", False),
    (B % "\\left(\\frac32,-13\\right)", "\\left( \\frac{3}{2}, -13 \\right)", True), (B % "(1.5,-13)", "\\left( \\frac{3}{2}, -13 \\right)", True),
    # --- intervals: bracket types matter
    (B % "(3,4]", "(3,4]", True), (B % "(3,4)", "(3,4]", False), (B % "[3,4]", "(3,4]", False),
    (B % "(2,\\infty)", "(2,\\infty)", True), (B % "[2,\\infty)", "(2,\\infty)", False), (B % "(-\\infty, 0]", "(-\\infty, 0]", True),
    (B % "(-\\infty,0)", "(-\\infty, 0]", False), (B % "[-2,7]", "x \\in [-2,7]", True), (B % "x\\in[-2,7]", "x \\in [-2,7]", True),
    (B % "(3,\\infty)\\cup(-\\infty,2)", "(-\\infty, 2) \\cup (3, \\infty)", True),
    (B % "(-\\infty,3)\\cup(3,\\infty)", "(-\\infty, 2) \\cup (3, \\infty)", False),
    (B % "\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "\\left(\\frac{3}{5},\\frac{8}{3}\\right]", True),
    (B % "(0.6,\\frac83]", "\\left(\\frac{3}{5},\\frac{8}{3}\\right]", True),
    # --- sets and lists: order does not matter, multiplicity does
    (B % "1,-2", "1,-2", True), (B % "-2, 1", "1,-2", True), (B % "\\{1,-2\\}", "1,-2", True), (B % "1", "1,-2", False),
    (B % "1,-2,3", "1,-2", False), (B % "7,5,3", "3, 5, 7", True), (B % "3,5", "3, 5, 7", False),
    (B % "1+\\sqrt{19}, 1-\\sqrt{19}", "1 \\pm \\sqrt{19}", True), (B % "1\\pm\\sqrt{19}", "1 \\pm \\sqrt{19}", True),
    (B % "1+\\sqrt{19}", "1 \\pm \\sqrt{19}", False), (B % "-2, 1+\\sqrt5, 1-\\sqrt5", "\\{1\\pm\\sqrt{5},-2\\}", True),
    (B % "x=1 \\text{ or } x=-2", "1,-2", True),
    # --- equations
    (B % "5", "x=5", True), (B % "x=5", "5", True), (B % "x = 5", "x=5", True), (B % "x=6", "x=5", False),
    (B % "2x+3", "y = 2x + 3", True), (B % "y=2x+3", "y = 2x + 3", True), (B % "2x-y+3=0", "y = 2x + 3", True),
    (B % "y=3x+2", "y = 2x + 3", False), (B % "-5x+7y-11z-4=0", "5x - 7y + 11z + 4 = 0", True),
    (B % "5x-7y+11z=4", "5x - 7y + 11z + 4 = 0", False), (B % "5x-7y+11z+4", "5x - 7y + 11z + 4 = 0", False),
    (B % "2x", "f(x)=2 x", True), (B % "f(x)=2x", "f(x)=2 x", True), (B % "1", "k=1", True),
    # --- matrices
    (B % "\\begin{pmatrix}-1/3\\\\2/3\\\\5/3\\end{pmatrix}", "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}", True),
    (B % "\\begin{bmatrix}-\\frac13\\\\ \\frac23\\\\ \\frac53\\end{bmatrix}", "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}", True),
    (B % "\\begin{pmatrix}-1/3\\\\5/3\\\\2/3\\end{pmatrix}", "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}", False),
    (B % "\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", True),
    (B % "\\begin{pmatrix}-1&0\\\\0&1\\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", False),
    (B % "\\begin{pmatrix}-1\\\\0\\\\0\\\\-1\\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", False),
    # --- plain text answers and choices
    (B % "\\text{Evelyn}", "\\text{Evelyn}", True), (B % "Evelyn", "\\text{Evelyn}", True), (B % "evelyn", "\\text{Evelyn}", True),
    (B % "Navin", "\\text{Evelyn}", False), (B % "East", "\\text{east}", True), (B % "\\text{even}", "\\text{even}", True),
    (B % "neve", "\\text{even}", False), (B % "odd", "\\text{even}", False), (B % "C", "\\text{(C)}", True),
    (B % "(C)", "\\text{(C)}", True), (B % "\\textbf{(C)}", "\\text{(C)}", True), (B % "B", "\\text{(C)}", False),
    # --- expressions with variables
    (B % "x^5-x^4+x^3-x^2+x-1", "x^5 - x^4 + x^3 - x^2 + x - 1", True),
    (B % "-1+x-x^2+x^3-x^4+x^5", "x^5 - x^4 + x^3 - x^2 + x - 1", True),
    (B % "x^5-x^4+x^3-x^2+x+1", "x^5 - x^4 + x^3 - x^2 + x - 1", False), (B % "2(k+1)", "2k+2", True), (B % "2k+1", "2k+2", False),
    (B % "2n+2", "2k+2", False), (B % "ab+2a+5b+10", "(a+5)(b+2)", True), (B % "(b+2)(a+5)", "(a+5)(b+2)", True),
    (B % "(a+2)(b+5)", "(a+5)(b+2)", False), (B % "p-q", "p - q", True), (B % "q-p", "p - q", False),
    (B % "\\frac{n(n+1)}{2}", "\\frac{n^2+n}{2}", True), (B % "\\cot x", "\\cot x", True), (B % "\\frac{\\cos x}{\\sin x}", "\\cot x", True),
    (B % "\\tan x", "\\cot x", False), (B % "3r^2", "3R^2", False), (B % "\\frac{1}{2a}(e^{at}-e^{-at})", "\\frac{1}{2a}(\\exp{a*t} - \\exp{-a*t})", True),
    (B % "I(0)e^{-t/(RC)}", "I(0) e^{-\\frac{t}{R C}}", True), (B % "0", "I(0) e^{-\\frac{t}{R C}}", False),
    (B % "\\binom{2n}{n}", "\\binom{2n}{n}", True), (B % "\\lfloor \\log_2 n\\rfloor+1", "\\left\\lfloor\\log _{2} n\\right\\rfloor+1", True),
    # --- base subscripts
    (B % "52_8", "52_8", True), (B % "52_{8}", "52_8", True), (B % "52", "52_8", True), (B % "53", "52_8", False),
    # --- adversarial and invalid input: not equal, never an error
    (B % "9^{9^{9^{9}}}", "3", False), (B % "1000000!", "3", False), (B % "\\frac{\\sqrt{", "3", False), (B % "}{", "3", False),
    (B % "\\frac{1}{0}", "3", False), (B % "0^{-1}", "3", False), (B % "__import__('os')", "3", False),
    ("\\boxed{" + "{" * 1000 + "3" + "}" * 1000 + "}", "3", False),  # beyond 1000 characters: exact strings only
    (B % "3)", "3", False), (B % "(3", "3", False),
]

# (response, gold, multiple_answers, expected): OlympiadBench's multiple-answer golds
MULTIPLE_CASES = [
    (B % "84, 69", "69$,$84", True, True), (B % "69", "69$,$84", True, False),
    (B % "1,250", "1,250", True, True), (B % "250, 1", "1,250", True, True), (B % "1250", "1,250", True, False),
    (B % "1250", "1,250", False, True),  # without the flag, 1,250 is one number
    (B % "(2,7,13),(1,8,19),(4,5,7)", "(1,8,19), (2,7,13), (4,5,7)", True, True),
    (B % "(7,2,13),(1,8,19),(4,5,7)", "(1,8,19), (2,7,13), (4,5,7)", True, False),
    (B % "f(x)=x+1, f(x)=-1", "f(x)=-1$,$f(x)=x+1", True, True),
]

# Disagreements with math-verify 0.9.0 on the corpus below that we keep: (response, gold) -> why.
KNOWN_DISAGREEMENTS = {
    ("The answer is \\boxed{13.2872}.", "\\frac{3840}{289}"):
        "a rounded decimal within relative 1e-4 of the gold (13.28720 vs 13.287197..) is accepted, as in the "
        "Qwen2.5-Math evaluation; math-verify wants agreement to its rounding precision",
}


def _data_golds(root: str) -> dict[str, list[str]]:
    golds = {}
    for name in ("math500", "minerva", "olympiadbench", "gsm8k_test", "aime24", "amc23"):
        with open(os.path.join(root, "data", f"{name}.jsonl")) as f:
            golds[name] = [json.loads(line)["answer"] for line in f]
    return golds


def _rewrites(gold: str) -> list[str]:
    """Candidate answers for one gold: reformatted (equivalent) and perturbed (usually not)."""
    out = [re.sub(r"(?<![a-zA-Z]) | (?![a-zA-Z])", "", gold), gold.replace("\\frac", "\\dfrac")]
    if "\\left" not in gold and "(" in gold:
        out.append(gold.replace("(", "\\left(").replace(")", "\\right)"))
    if re.fullmatch(r"-?\d+", gold):
        out += [f"{gold}.0", f"\\frac{{{2 * int(gold)}}}{{2}}", str(int(gold) + 1), str(int(gold) * 10 + 3)]
    if m := re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", gold):
        num, den = int(m.group(2)), int(m.group(3))
        out += [f"{m.group(1)}{num}/{den}", f"{m.group(1)}{num / den:.6g}", f"{m.group(1)}\\frac{{{den}}}{{{num}}}"]
    if re.search(r"\d", gold):
        out.append(re.sub(r"\d", lambda d: str((int(d.group()) + 1) % 10), gold, count=1))
    if gold.startswith("(") and "," in gold:
        head, _, tail = gold[1:-1].partition(",")
        out += [f"({tail},{head})", "[" + gold[1:]]
    if "\\sqrt" in gold or "\\pi" in gold:
        out.append(f"2{gold}" if not gold.startswith("-") else gold[1:])
    return out


def agreement_corpus(root: str) -> list[tuple[str, str]]:
    """(response, gold) pairs: every non-integer math500 gold plus samples of the other files' golds."""
    golds = _data_golds(root)
    chosen = [g for g in golds["math500"] if not re.fullmatch(r"-?\d+", g)][::2]
    chosen += golds["minerva"][:40:2] + golds["olympiadbench"][::16] + golds["gsm8k_test"][:10] + golds["aime24"][:5]
    pairs = []
    for k, gold in enumerate(dict.fromkeys(chosen)):
        answers = [a for a in dict.fromkeys(_rewrites(gold)) if a != gold]
        for j in range(min(3, len(answers))):  # 3 rewritings per gold, rotating through the kinds
            pairs.append(("The answer is \\boxed{%s}." % answers[(k + j * 2) % len(answers)], gold))
    return pairs
