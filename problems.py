"""The problems themselves: loading and validating them, their difficulty, and the prompts built from them.

Data: `load_problems("math500,gsm8k_train,mine:/x/y.parquet,arith")` reads .jsonl, .json (a list) and
.parquet files, data/<name>.jsonl benchmarks and the built-in families, seeded: `arith` (5 arithmetic levels)
and `words` (4 levels of word problems: one step, two steps, three steps, two steps and a distractor
sentence, with varied names, objects and verbs), or one level of them (`arith3`, `words2`). Fields:
*_FIELDS, else the last \\boxed{} of `solution`; `solution` is also kept as the reference solution.
Golds must pass reward.validate_gold; bad rows (not JSON, not UTF-8, no usable gold) are skipped, each named
by file, line and id, and a file of mostly bad rows is refused (strict=True: any). Deviation: a trailing
"Please reason step by step, and put your final answer within \\boxed{}." (aime25) is stripped.

Difficulty d in [0, 1] (0 = easiest), first match wins: a `difficulty` field; MATH `level` 1..5 ->
(level - 1) / 4 (the built-in levels likewise); the source (SOURCE_DIFFICULTY: gsm8k < math < minerva <
amc < olympiad < aime); estimate_difficulty(): 1 - pass rate of k policy samples, cached by problem id.
Problems with none of these have d = None (curriculum.py uses them at every level).

Prompts (build_prompt, PromptConfig.template): auto takes the source's own template (SOURCE_TEMPLATES:
arith -> fewshot, words -> fewshot-cot), else chat if the tokenizer has a chat template, else plain.
  chat     the tokenizer's chat template around "{problem} {suffix}" as one user turn. No system turn unless
           PromptConfig.system_prompt gives one: a default system turn the template adds by itself (Qwen2.5's
           "You are Qwen, created by Alibaba Cloud...", SmolLM2's) is located and removed (default_system_turn);
           system_prompt="default" keeps it.
  plain    "{problem} {suffix}\\n".
  fewshot  FEWSHOT_PREFIX + "Question: {problem}\\nAnswer:", for base models; generation stops at
           "\\n\\nQuestion" (TEMPLATE_STOPS, via stop_strings), where the model would invent the next question.
  fewshot-cot  the same with COT_PREFIX: examples that reason in words with the strategic grams' planning
           phrases ("Let's think step by step", "so we need to", "Next", "Wait, let me check"), so a small
           model's answers hold planning tokens for HICRA (measured: python compare.py --probe words).

Used by train.py (training data and prompts), eval.py (the benchmarks and their prompts) and curriculum.py
(which orders the problems into levels). No command line of its own; to load data and count the problems
of each level: python curriculum.py --show hgrpo1 --data math500,arith; to see how a model starts on them:
python compare.py --probe words
"""
import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from reward import extract_answer, validate_gold

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
PROBLEM_FIELDS = ("problem", "question", "prompt")
ANSWER_FIELDS = ("answer", "gold", "final_answer", "ground_truth")
ID_FIELDS = ("id", "unique_id", "idx", "problem_id")
DATA_FORMATS = (".jsonl", ".json", ".parquet")
# Prefix of a source name -> difficulty, used when rows carry neither `difficulty` nor `level`.
SOURCE_DIFFICULTY = {"gsm8k": 0.1, "math": 0.5, "minerva": 0.6, "amc": 0.7, "olympiad": 0.8, "aime": 0.9}
COPIED_INSTRUCTION = re.compile(r"\s*Please reason step by step, and put your final answer within \\boxed\{\}\.?\s*$")
# Prompt templates are data-set configuration: a source listed here gets this template under "auto".
SOURCE_TEMPLATES = {"arith": "fewshot", "words": "fewshot-cot"}
FEWSHOT_PREFIX = ("Question: What is 3 + 5?\nAnswer: 3 + 5 = 8. The answer is \\boxed{8}.\n\n"
                  "Question: What is 6 * 2?\nAnswer: 6 * 2 = 12. The answer is \\boxed{12}.\n\n")
# Chain of thought in words, one example per shape of the word problems, with the planning phrases of the
# strategic-gram list ("let's", "step by step", "so", "need to", "next", "wait", "let me") for the model to
# imitate: HICRA then has planning tokens to credit (about 20% of these answers' tokens).
COT_PREFIX = ("Question: Mia has 3 apples. Mia buys 5 more apples. How many apples does Mia have now?\n"
              "Answer: Let's think step by step. Mia has 3 apples. She buys 5 more, so we need to add: 3 + 5 = 8. "
              "So the answer is \\boxed{8}.\n\n"
              "Question: Ana has 6 shells. Tom has 2 fewer shells than Ana. How many shells does Tom have?\n"
              "Answer: Let's think step by step. Ana has 6 shells. Tom has 2 fewer. Wait, fewer means we need to "
              "subtract: 6 - 2 = 4. So the answer is \\boxed{4}.\n\n"
              "Question: Leo has 9 cards. Leo gives away 4 cards. Then Leo finds 2 more cards. How many cards does "
              "Leo have now?\nAnswer: Let's think step by step. Leo gives away 4, so we need to subtract: 9 - 4 = 5. "
              "Next, he finds 2 more, so we need to add: 5 + 2 = 7. So the answer is \\boxed{7}.\n\n"
              "Question: Sam has 4 coins and Zoe has 7 coins. How many coins do they have together?\n"
              "Answer: Let's think step by step. Sam has 4 and Zoe has 7, so let me add them: 4 + 7 = 11. "
              "So the answer is \\boxed{11}.\n\n")  # every answer fits in 64 tokens (SmolLM2's tokenizer: 44-61)
FEWSHOT_PREFIXES = {"fewshot": FEWSHOT_PREFIX, "fewshot-cot": COT_PREFIX}  # template -> examples before the question
TEMPLATE_STOPS = {t: ["\n\nQuestion"] for t in FEWSHOT_PREFIXES}  # the model would go on to invent a next question
TEMPLATES = ("auto", "chat", "plain", *FEWSHOT_PREFIXES)
SYSTEM_DEFAULT = "default"  # PromptConfig.system_prompt value that keeps a chat template's own system turn


@dataclass
class Problem:
    id: str                   # unique over the loaded data; error messages and the difficulty cache use it
    problem: str              # the question text, without an instruction suffix
    answer: str               # gold final answer, accepted by reward.validate_gold
    difficulty: float | None  # in [0, 1], 0 = easiest; None = unknown (used at every level)
    source: str               # data source name: file stem, the "name:" of "name:path", "arith" or "words"
    location: str = ""        # where the row came from ("data/x.jsonl line 12"), for warnings that name it
    solution: str | None = None  # reference solution where the data has one (`solution`, GSM8K's text before ####)
    multiple_answers: bool = False  # the gold is a list of answers (OlympiadBench's `multiple_answers`)


# ----------------------------------------------------------------------------- built-in arithmetic
def arithmetic_problems(level: int, n: int, seed: int) -> list[Problem]:
    """n seeded problems of one level: 1 a+b (1 digit), 2 a+b (2 digits), 3 a*b (1 digit),
    4 a-b (2 digits, a >= b), 5 a+b*c / a*b-c / (a+b)*c (1 digit). Answers are exact integers."""
    if level not in range(1, 6):
        raise ValueError(f"arithmetic level {level} does not exist (levels are 1..5)")
    rng, problems = random.Random(seed * 10 + level), []
    for i in range(n):
        a, b, c = (rng.randint(10, 99) if level in (2, 4) else rng.randint(1, 9) for _ in range(3))
        text = {1: f"{a} + {b}", 2: f"{a} + {b}", 3: f"{a} * {b}", 4: f"{max(a, b)} - {min(a, b)}",
                5: rng.choice([f"{a} + {b} * {c}", f"{a} * {b} - {c}", f"({a} + {b}) * {c}"])}[level]
        answer = eval(text)  # safe: our own text of digits, + - * and parentheses
        problems.append(Problem(f"arith-{level}-{i}", f"What is {text}?", str(answer), (level - 1) / 4, "arith"))
    return problems


# ----------------------------------------------------------------------------- built-in word problems
NAMES = ("Sam", "Mia", "Leo", "Ana", "Tom", "Zoe", "Ben", "Ivy", "Max", "Eva", "Raj", "Kim", "Omar", "Lucy", "Noah",
         "Nina")
OBJECTS = ("coins", "apples", "stickers", "marbles", "pencils", "books", "cards", "shells", "cookies", "balloons",
           "stamps", "crayons")  # no object's name is part of another's (the tests find them by word)
GAINS = ("gets {n} more {obj}", "finds {n} more {obj}", "buys {n} more {obj}", "is given {n} more {obj}",
         "picks up {n} more {obj}", "wins {n} more {obj}")
LOSSES = ("gives away {n} {obj}", "loses {n} {obj}", "sells {n} {obj}", "gives {n} {obj} to {other}",
          "trades away {n} {obj}", "drops {n} {obj}")
THEN = ("Then", "After that,", "Later,", "In the afternoon,")
DISTRACTORS = ("{other} has {n} {obj}.", "{name} also has {n} {other_obj}.", "{name} is {n} years old.",
               "{other} has {n} {other_obj}.")
QUESTIONS = ("How many {obj} does {name} have now?", "How many {obj} does {name} have at the end?",
             "How many {obj} does {name} end up with?")
ONE_STEP = ("{name} has {a} {obj} and {other} has {b} {obj}. How many {obj} do they have together?",
            "{name} has {a} {obj}. {other} has {b} more {obj} than {name}. How many {obj} does {other} have?",
            "{name} has {a} {obj}. {other} has {b} fewer {obj} than {name}. How many {obj} does {other} have?")
WORD_LEVELS = {1: 1, 2: 2, 3: 3, 4: 2}  # level -> changes to the count; level 4 adds a distractor sentence


def _word_story(rng: random.Random, level: int) -> tuple[str, int]:
    """One problem's text and answer: a starting count, WORD_LEVELS[level] gains or losses, a question."""
    (name, other), (obj, other_obj) = rng.sample(NAMES, 2), rng.sample(OBJECTS, 2)
    if level == 1 and rng.random() < 0.5:  # the one-step comparison forms
        form, a, b = rng.randrange(3), rng.randint(4, 9), rng.randint(2, 9)
        b = min(a - 1, b) if form == 2 else b
        return ONE_STEP[form].format(name=name, other=other, obj=obj, a=a, b=b), a - b if form == 2 else a + b
    count, most = (rng.randint(2, 9), 9) if level == 1 else (rng.randint(3, 9), 5)  # steps of 2-5: sums stay small
    sentences = [f"{name} has {count} {obj}."]
    for step in range(WORD_LEVELS[level]):
        gain = count < 2 or rng.random() < 0.5
        n = rng.randint(2, most if gain else min(most, count))
        phrase = rng.choice(GAINS if gain else LOSSES).format(n=n, obj=obj, other=other)
        sentences.append(f"{name} {phrase}." if step == 0 else f"{rng.choice(THEN)} {name} {phrase}.")
        count += n if gain else -n
    if level == 4:
        distractor = rng.choice(DISTRACTORS).format(name=name, other=other, obj=obj, other_obj=other_obj,
                                                    n=rng.randint(2, 12))
        sentences.insert(rng.randint(1, len(sentences)), distractor)
    return " ".join(sentences + [rng.choice(QUESTIONS).format(obj=obj, name=name)]), count


def word_problems(level: int, n: int, seed: int) -> list[Problem]:
    """n seeded word problems of one level: 1 one step (a gain or loss, or a together / more than / fewer
    than comparison), 2 two steps, 3 three steps, 4 two steps and a distractor sentence (another person's
    count, another object, an age). Counts start at 2-12 and change by 2-9, never below 0; answers are
    exact integers; difficulty (level - 1) / 4 as for arithmetic."""
    if level not in WORD_LEVELS:
        raise ValueError(f"word problem level {level} does not exist (levels are 1..{len(WORD_LEVELS)})")
    rng = random.Random(f"words-{seed}-{level}")  # str seeds are hashed by sha512: the same on every run
    stories = [_word_story(rng, level) for _ in range(n)]
    return [Problem(f"words-{level}-{i}", text, str(answer), (level - 1) / 4, "words")
            for i, (text, answer) in enumerate(stories)]


# ----------------------------------------------------------------------------- loading
def read_rows(path: str):
    """Yield (location, row or a one-line error) for each row of a .jsonl, .json (a list) or .parquet file."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    if path.endswith(".jsonl"):
        with open(path, "rb") as f:  # bytes: one bad byte spoils its own row only
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    yield f"line {lineno}", f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                    continue
                if line.strip():
                    try:
                        yield f"line {lineno}", json.loads(line)
                    except json.JSONDecodeError as e:
                        yield f"line {lineno}", f"bad JSON ({e.msg} at column {e.colno})"
        return
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or convert it to .jsonl")
        rows = pq.read_table(path).to_pylist()
    elif path.endswith(".json"):
        data = Path(path).read_bytes()
        try:
            rows = json.loads(data.decode("utf-8-sig"))
        except UnicodeDecodeError as e:  # one JSON document: a bad byte spoils the whole list
            line = data[:e.start].count(b"\n") + 1
            raise ValueError(f"{path}: line {line}: not UTF-8 (byte 0x{data[e.start]:02x}); a .json file is one "
                             "document, so the row cannot be skipped: fix or remove it (or use .jsonl)")
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: bad JSON at line {e.lineno}: {e.msg}")
    else:
        raise ValueError(f"{path}: unknown data format (expected .jsonl, .json or .parquet)")
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of objects, got {type(rows).__name__}")
    yield from ((f"item {i}", row) for i, row in enumerate(rows))


def _row_difficulty(row: dict, source: str, row_id: str) -> float | None:
    if (d := row.get("difficulty")) is not None:
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= 1:
            raise ValueError(f"id {row_id}: difficulty {d!r} is not a number in [0, 1]")
        return float(d)
    if row.get("level") is not None:
        match = re.fullmatch(r"(?:Level )?([1-5])", str(row["level"]).strip())
        return (int(match.group(1)) - 1) / 4 if match else None  # MATH has a few "Level ?" rows: unknown
    return next((d for prefix, d in SOURCE_DIFFICULTY.items() if source.lower().startswith(prefix)), None)


def _parse_row(row, source: str, location: str) -> Problem:
    """One row -> Problem, or ValueError with the reason (the caller adds file and line)."""
    if not isinstance(row, dict):
        raise ValueError(row if isinstance(row, str) else f"expected a JSON object, got {type(row).__name__}")
    first = lambda names: next((row[name] for name in names if row.get(name) is not None), None)
    row_id = str(first(ID_FIELDS)) if first(ID_FIELDS) is not None else f"{source}-{location.split()[-1]}"
    problem = first(PROBLEM_FIELDS)
    if isinstance(problem, list):  # chat messages (verl / DeepScaleR parquet): the last user turn
        problem = next((m.get("content") for m in reversed(problem) if isinstance(m, dict) and m.get("role") == "user"),
                       None)
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(f"id {row_id}: no problem text (fields tried: {', '.join(PROBLEM_FIELDS)})")
    answer = first(ANSWER_FIELDS)
    if answer is None and isinstance(row.get("reward_model"), dict):
        answer = row["reward_model"].get("ground_truth")
    if answer is None and isinstance(row.get("solution"), str):
        answer = extract_answer(row["solution"])
    if answer is None:
        raise ValueError(f"id {row_id}: no answer (tried {', '.join(ANSWER_FIELDS)}, the last \\boxed{{}} of solution)")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(int(answer)) if float(answer).is_integer() else str(answer)
    if not isinstance(answer, str):
        raise ValueError(f"id {row_id}: answer {answer!r} is not text")
    solution = row["solution"] if isinstance(row.get("solution"), str) and row["solution"].strip() else None
    if "####" in answer:  # GSM8K's original format: reasoning, then "#### 1,234"
        reasoning, answer = answer.rsplit("####", 1)
        solution, answer = solution or reasoning.strip() or None, answer.strip().replace(",", "")
    if (reason := validate_gold(answer)) is not None:
        raise ValueError(f"id {row_id}: unusable gold {answer!r}: {reason}")
    return Problem(row_id, COPIED_INSTRUCTION.sub("", problem.strip()), answer.strip(),
                   _row_difficulty(row, source, row_id), source, solution=solution,
                   multiple_answers=bool(row.get("multiple_answers")))


def _resolve(item: str, data_dir: str) -> tuple[str, str]:
    """One spec item -> (source name, path)."""
    name, sep, rest = item.partition(":")
    if sep and re.fullmatch(r"\w[\w.-]*", name) and (os.path.exists(rest) or rest.endswith(DATA_FORMATS)):
        return name, rest
    if os.path.exists(item) or item.endswith(DATA_FORMATS):
        return os.path.splitext(os.path.basename(item))[0], item
    path = os.path.join(data_dir, f"{item}.jsonl")
    if not os.path.isfile(path):
        known = sorted(f[:-6] for f in os.listdir(data_dir) if f.endswith(".jsonl")) if os.path.isdir(data_dir) else []
        raise ValueError(f"data '{item}': not a file, and no {path} (benchmarks: {', '.join(known)}; "
                         "built in: arith, words, or one level of them such as arith3, words2)")
    return item, path


BUILTIN = {"arith": (arithmetic_problems, 5), "words": (word_problems, 4)}  # name -> (generator, levels)


def builtin_problems(item: str, per_level: int, seed: int) -> list[Problem] | None:
    """"arith" / "words": every level of that built-in family; "arith3", "words2": one level; else None."""
    match = re.fullmatch(r"(arith|words)(\d*)", item)
    if not match:
        return None
    make, levels = BUILTIN[match[1]]
    wanted = [int(match[2])] if match[2] else range(1, levels + 1)
    return [p for level in wanted for p in make(level, per_level, seed)]


def load_problems(spec: str | list[str], data_dir: str = DATA_DIR, builtin_per_level: int = 200, seed: int = 0,
                  strict: bool = False, verbose: bool = True) -> list[Problem]:
    """Load and validate every source in `spec` (comma-separated string or list) into one list."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ValueError("no training data given (e.g. --data arith, --data math500, --data name:path.jsonl)")
    problems = []
    for item in items:
        loaded, errors = [], []
        builtin = builtin_problems(item, builtin_per_level, seed)
        if builtin is not None:
            loaded = builtin
        else:
            source, path = _resolve(item, data_dir)
            for location, row in read_rows(path):
                try:
                    loaded.append(replace(_parse_row(row, source, location), location=f"{path} {location}"))
                except ValueError as e:
                    if strict:
                        raise ValueError(f"{path} {location}: {e}")
                    errors.append(f"{path} {location}: {e}")
            if len(errors) > len(loaded) or not loaded:
                raise ValueError(f"{path}: {len(errors)} of {len(errors) + len(loaded)} rows unusable, refusing the "
                                 f"file; first: {errors[0] if errors else 'the file is empty'}")
        for error in errors[:3]:  # printed even when not verbose: a skipped row changes what is trained or scored
            print(f"problems: skipped {error}")
        if verbose:
            print(f"problems: {item}: {len(loaded)} problems, {len(errors)} rows skipped, "
                  f"{sum(p.difficulty is not None for p in loaded)} with a difficulty")
        problems += loaded
    repeated = [(i, n) for i, n in Counter(p.id for p in problems).items() if n > 1]
    if repeated:  # ids key the difficulty cache and name problems in errors and logs
        raise ValueError(f"problem ids must be unique over the data given; repeated (id, times): {repeated[:5]}")
    return problems


def estimate_difficulty(problems: list[Problem], pass_rate_fn: Callable[[list[Problem], int], list[float]],
                        k: int, cache_path: str | None = None) -> list[Problem]:
    """difficulty = 1 - pass rate over k samples, pass_rate_fn(problems, k) -> one rate per problem.
    Cached as {"k": k, "difficulty": {id: d}}; only problems missing from it are sampled. Call it on one
    rank (or give each rank its share of problems) and broadcast: it does no communication."""
    saved = json.loads(Path(cache_path).read_text()) if cache_path and os.path.isfile(cache_path) else {}
    cache = saved["difficulty"] if saved.get("k") == k else {}  # a cache made with another k is redone
    missing = [p for p in problems if p.id not in cache]
    if missing:
        rates = list(pass_rate_fn(missing, k))
        if len(rates) != len(missing) or not all(0 <= r <= 1 for r in rates):
            raise ValueError(f"pass_rate_fn gave {len(rates)} rates for {len(missing)} problems (each in [0, 1])")
        cache.update({p.id: 1.0 - float(r) for p, r in zip(missing, rates)})
        if cache_path:  # write then rename: a crash never leaves half a cache
            Path(f"{cache_path}.tmp").write_text(json.dumps({"k": k, "difficulty": cache}))
            os.replace(f"{cache_path}.tmp", cache_path)
    return [replace(p, difficulty=cache[p.id]) for p in problems]


# ----------------------------------------------------------------------------- prompts
@dataclass
class PromptConfig:
    template: str = "auto"  # auto | chat | plain | fewshot | fewshot-cot; auto: SOURCE_TEMPLATES, else chat, else plain
    suffix: str = "Let's think step by step and output the final answer within \\boxed{}."  # appended by chat and plain
    system_prompt: str | None = None  # None: no system turn (the template's own removed); 'default': keep it; else text


def _template(problem: Problem, cfg: PromptConfig, tokenizer=None) -> str:
    if cfg.template not in TEMPLATES:
        raise ValueError(f"prompt template '{cfg.template}' unknown (choose from {', '.join(TEMPLATES)})")
    if cfg.template != "auto":
        return cfg.template
    return SOURCE_TEMPLATES.get(problem.source) or ("chat" if getattr(tokenizer, "chat_template", None) else "plain")


def build_prompt(problem: Problem, tokenizer, cfg: PromptConfig) -> str:
    """chat: the tokenizer's template around problem + suffix as one user turn, with no system turn unless
    cfg.system_prompt asks for one; plain: "{problem} {suffix}\\n"; fewshot, fewshot-cot: its FEWSHOT_PREFIXES
    entry + "Question: {problem}\\nAnswer:". plain and the few-shot ones put a system prompt text, when given,
    first, then a blank line."""
    template = _template(problem, cfg, tokenizer)
    system = cfg.system_prompt if cfg.system_prompt not in (None, SYSTEM_DEFAULT) else None
    if template in FEWSHOT_PREFIXES:
        return (f"{system}\n\n" if system else "") + f"{FEWSHOT_PREFIXES[template]}Question: {problem.problem}\nAnswer:"
    text = f"{problem.problem} {cfg.suffix}".strip()
    if template == "plain":
        return (f"{system}\n\n" if system else "") + text + "\n"
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt template 'chat' asked for, but the tokenizer has no chat template (use plain)")
    user = {"role": "user", "content": text}
    if system is not None:
        rendered = _render(tokenizer, [{"role": "system", "content": system}, user])
        if rendered is None or system not in rendered:
            raise ValueError("the tokenizer's chat template takes no system turn; put the instruction in the "
                             "problem suffix instead, or leave --system-prompt unset")
        return rendered
    rendered = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    if cfg.system_prompt == SYSTEM_DEFAULT:
        return rendered
    known = _TURNS.get(id(tokenizer))  # the turn does not depend on the problem: found once per template
    if not (known and known[0] == tokenizer.chat_template and rendered[known[1]:known[2]] == known[3]):
        start, end = default_system_turn(tokenizer, text)
        known = _TURNS[id(tokenizer)] = (tokenizer.chat_template, start, end, rendered[start:end])
    return rendered[:known[1]] + rendered[known[2]:]


_TURNS = {}  # id(tokenizer) -> (chat template, start, end, text) of the default system turn found for it
_SYSTEM_MARK, _ASSISTANT_MARK = "SYSTEM-MARK-7f3a1c", "ASSISTANT-MARK-7f3a1c"  # texts no template or problem holds


def _render(tokenizer, messages: list[dict], generation: bool = True) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    except Exception:  # jinja's TemplateError ("System role not supported") or a template's own assertion
        return None


def default_system_turn(tokenizer, text: str) -> tuple[int, int]:
    """[start, end) of the system turn the chat template adds by itself around user turn `text` ((0, 0): none).

    With a marker system prompt S: render([user]) = pre + D + rest and render([system S, user]) = pre + S + rest
    means the template puts a default system content D where S goes. The turn's ends come from the template
    itself: the generation prompt g = render(gen) - render(no gen); the user turn's footer = what separates the
    user content from an assistant reply, less g; the system turn is assumed to end with the same footer, and
    to open with the user turn's header with "user" read as "system". A template where these pieces are not
    found raises ValueError (its turn can be kept with system_prompt='default')."""
    user = {"role": "user", "content": text}
    system = {"role": "system", "content": _SYSTEM_MARK}
    plain, with_system = _render(tokenizer, [user]), _render(tokenizer, [system, user])
    if with_system is None or with_system.count(_SYSTEM_MARK) != 1:
        return 0, 0  # the template takes no system turn: nothing of its own to remove
    at = with_system.index(_SYSTEM_MARK)
    pre, rest = with_system[:at], with_system[at + len(_SYSTEM_MARK):]
    if not (plain.startswith(pre) and plain.endswith(rest) and len(plain) >= len(pre) + len(rest)):
        return 0, 0  # no system turn in the plain render
    default = plain[len(pre):len(plain) - len(rest)]
    failed = ValueError("the tokenizer's chat template adds a default system turn that could not be located; "
                        "pass --system-prompt default to keep it, or a --system-prompt of your own")
    no_generation = _render(tokenizer, [system, user], generation=False)
    reply = _render(tokenizer, [system, user, {"role": "assistant", "content": _ASSISTANT_MARK}], generation=False)
    if no_generation is None or reply is None or not with_system.startswith(no_generation) or text not in rest:
        raise failed
    generation_prompt = with_system[len(no_generation):]
    between = reply[reply.rindex(text) + len(text):reply.index(_ASSISTANT_MARK)]  # user footer + assistant header
    footer = between[:len(between) - len(generation_prompt)] if between.endswith(generation_prompt) else None
    middle = rest[:rest.index(text)]  # system footer + user header
    if footer is None or not middle.startswith(footer) or "user" not in middle[len(footer):]:
        raise failed
    start = pre.find(middle[len(footer):].replace("user", "system", 1))
    if start < 0:
        raise failed
    return start, len(pre) + len(default) + len(footer)


def stop_strings(cfg: PromptConfig, problems: list[Problem]) -> list[str]:
    """The stop strings the templates of these problems need (sorted, without repeats)."""
    templates = {_template(p, cfg) for p in problems}  # chat and plain need none, so no tokenizer here
    return sorted({s for t in templates for s in TEMPLATE_STOPS.get(t, [])})
