"""problems.py: loading and its errors, arithmetic data, prompts, estimated difficulty. Every expected value
is written out by hand or recomputed here independently (row counts from the raw files, answers by a
separate evaluator)."""
import json
import operator
import os
import re
from types import SimpleNamespace

import pytest

import problems as P  # tests/conftest.py puts the repository root on sys.path
from problems import Problem, PromptConfig

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
BENCHMARKS = ["aime24", "aime25", "amc23", "gsm8k_test", "gsm8k_train", "math500", "minerva", "olympiadbench"]


def write(path, text):
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_loads_with_its_ids_answers_and_difficulty(name):
    with open(os.path.join(DATA_DIR, f"{name}.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    problems = P.load_problems(name, verbose=False)
    assert len(problems) == len(rows)  # no row of the shipped data may be dropped
    assert [p.id for p in problems] == [str(r["id"]) for r in rows]
    assert [p.answer for p in problems] == [r["answer"].strip() for r in rows]
    assert all(p.source == name and p.problem for p in problems)
    if name == "math500":  # level 1..5 -> (level - 1) / 4
        assert [p.difficulty for p in problems] == [(r["level"] - 1) / 4 for r in rows]
    else:
        expected = {"aime": 0.9, "amc": 0.7, "gsm8k": 0.1, "minerva": 0.6, "olympiad": 0.8}
        assert {p.difficulty for p in problems} == {next(v for k, v in expected.items() if name.startswith(k))}


def test_copied_instruction_is_stripped_from_aime25():
    first = P.load_problems("aime25", verbose=False)[0]
    assert first.problem == "Find the sum of all integer bases $b>9$ for which $17_b$ is a divisor of $97_b.$"


def test_parquet_json_and_named_sources_with_field_mapping(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    table = pa.Table.from_pylist([
        {"idx": 7, "question": "What is 2 + 2?", "final_answer": 4, "difficulty": 0.3, "prompt": None, "reward_model": None},
        {"idx": 8, "question": None, "final_answer": None, "difficulty": None,
         "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Name 5."}],
         "reward_model": {"ground_truth": "5"}},
    ])
    pq.write_table(table, tmp_path / "mine.parquet")
    json_path = write(tmp_path / "extra.json", json.dumps([
        {"problem_id": "j1", "prompt": "Solve.", "solution": "so \\boxed{\\frac{1}{2}} done", "level": "Level 5"},
        {"problem_id": "j2", "prompt": "GSM.", "answer": "2 + 2 = 4 #### 1,234"},
    ]))
    problems = P.load_problems(f"named:{tmp_path / 'mine.parquet'},{json_path}", verbose=False)
    assert [(p.id, p.problem, p.answer, p.difficulty, p.source) for p in problems] == [
        ("7", "What is 2 + 2?", "4", 0.3, "named"), ("8", "Name 5.", "5", None, "named"),
        ("j1", "Solve.", "\\frac{1}{2}", 1.0, "extra"), ("j2", "GSM.", "1234", None, "extra")]


def test_bad_rows_are_named_by_file_line_and_id(tmp_path, capsys):
    good = '{"id": "g%d", "problem": "p", "answer": "1"}\n'
    path = write(tmp_path / "d.jsonl", good % 1 + '{"id": "m1", "problem": "p"}\n' + good % 2 + "{not json\n"
                 + good % 3 + '{"id": "u1", "problem": "p", "answer": "\\\\frac{1}{"}\n' + good % 4)
    problems = P.load_problems(path)
    assert [p.id for p in problems] == ["g1", "g2", "g3", "g4"]
    out = capsys.readouterr().out
    assert re.search(r"skipped .*d\.jsonl line 2: id m1: no answer", out)
    assert re.search(r"skipped .*d\.jsonl line 4: bad JSON", out)
    assert re.search(r"skipped .*d\.jsonl line 6: id u1: unusable gold", out)
    with pytest.raises(ValueError, match=r"d\.jsonl line 2: id m1: no answer"):
        P.load_problems(path, strict=True)


@pytest.mark.parametrize("rows, message", [
    ('{"id": "a", "answer": "1"}\n', r"line 1: id a: no problem text"),
    ('{"id": "a", "problem": "p", "answer": "1"}\n[1, 2\n{"id": "b"}\n', r"2 of 3 rows unusable.*line 2: bad JSON"),
    ('{"id": "a", "problem": "p", "answer": ""}\n', r"line 1: id a: unusable gold"),
    ('{"id": "a", "problem": "p", "answer": "1", "difficulty": 3}\n', r"line 1: id a: difficulty 3 is not a number in \[0, 1\]"),
    ("\n", r"0 of 0 rows unusable.*empty"),
])
def test_a_file_of_mostly_bad_rows_is_refused(tmp_path, rows, message):
    path = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=r"bad\.jsonl.*" + message):
        P.load_problems(path, verbose=False)


def test_a_non_utf8_byte_skips_its_row_naming_file_and_line(tmp_path, capsys):
    good = b'{"id": "g%d", "problem": "p", "answer": "1"}\n'
    path = tmp_path / "latin.jsonl"
    path.write_bytes(good % 1 + b'{"id": "x", "problem": "caf\xe9", "answer": "1"}\n' + good % 2 + good % 3)
    assert [p.id for p in P.load_problems(str(path))] == ["g1", "g2", "g3"]
    assert re.search(r"skipped .*latin\.jsonl line 2: not UTF-8 \(byte 0xe9 at column 28\)", capsys.readouterr().out)
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + good % 1)  # a UTF-8 byte-order mark is not an error
    assert [p.id for p in P.load_problems(str(tmp_path / "bom.jsonl"), strict=True)] == ["g1"]
    (tmp_path / "latin.json").write_bytes(b'[\n{"id": "a", "problem": "p", "answer": "1"},\n{"problem": "\xe9"}]')
    with pytest.raises(ValueError, match=r"latin\.json: line 3: not UTF-8 \(byte 0xe9\)"):
        P.load_problems(str(tmp_path / "latin.json"))


def test_reference_solutions_and_multiple_answers_are_kept():
    rows = [json.loads(line) for line in open(os.path.join(DATA_DIR, "math500.jsonl"))]
    math500 = P.load_problems("math500", verbose=False)
    assert [p.solution for p in math500] == [r["solution"] for r in rows] and math500[0].solution
    assert all(p.solution is None for p in P.load_problems("aime25", verbose=False))
    olympiad = [json.loads(line) for line in open(os.path.join(DATA_DIR, "olympiadbench.jsonl"))]
    assert [p.multiple_answers for p in P.load_problems("olympiadbench", verbose=False)] == \
        [bool(r.get("multiple_answers")) for r in olympiad] and any(r.get("multiple_answers") for r in olympiad)
    gsm = P._parse_row({"id": "q", "problem": "p", "answer": "3 + 4 = 7 apples.\n#### 7"}, "gsm8k", "line 1")
    assert (gsm.answer, gsm.solution) == ("7", "3 + 4 = 7 apples.")


def test_spec_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no_such_bench.*benchmarks: aime24, .*math500.*arith"):
        P.load_problems("no_such_bench")
    with pytest.raises(ValueError, match=r"missing\.jsonl: no such file"):
        P.load_problems(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match=r"ids must be unique .*\[\('x', 2\)\]"):
        row = '{"id": "x", "problem": "p", "answer": "1"}\n'
        P.load_problems([write(tmp_path / "a.jsonl", row), write(tmp_path / "b.jsonl", row)], verbose=False)
    with pytest.raises(ValueError, match=r"expected a JSON list"):
        P.load_problems(write(tmp_path / "o.json", "{}"))


# ----------------------------------------------------------------------------- arithmetic
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def evaluate(text):
    """Independent evaluator: numbers and + - * with precedence and one level of parentheses."""
    text = re.sub(r"\((\d+) ([-+*]) (\d+)\)", lambda m: str(OPS[m[2]](int(m[1]), int(m[3]))), text)
    tokens = text.split()
    while "*" in tokens:
        i = tokens.index("*")
        tokens[i - 1:i + 2] = [str(int(tokens[i - 1]) * int(tokens[i + 1]))]
    value = int(tokens[0])
    for op, number in zip(tokens[1::2], tokens[2::2]):
        value = OPS[op](value, int(number))
    return value


@pytest.mark.parametrize("level, pattern, operand_range", [
    (1, r"(\d+) \+ (\d+)", (1, 9)), (2, r"(\d+) \+ (\d+)", (10, 99)), (3, r"(\d+) \* (\d+)", (1, 9)),
    (4, r"(\d+) - (\d+)", (10, 99)), (5, r"\(?(\d+) [-+*] (\d+)\)? [-+*] (\d+)", (1, 9))])
def test_arithmetic_levels_have_exact_integer_answers(level, pattern, operand_range):
    problems = P.arithmetic_problems(level, 60, seed=3)
    assert problems == P.arithmetic_problems(level, 60, seed=3) != P.arithmetic_problems(level, 60, seed=4)
    for p in problems:
        match = re.fullmatch(f"What is {pattern}\\?", p.problem)
        assert match, p.problem
        operands = [int(x) for x in match.groups()]
        assert all(operand_range[0] <= x <= operand_range[1] for x in operands)
        assert int(p.answer) == evaluate(p.problem[8:-1]) and p.answer == str(int(p.answer))
        assert p.difficulty == (level - 1) / 4 and p.source == "arith"
        if level == 4:
            assert operands[0] >= operands[1]
    if level == 5:
        assert len({re.sub(r"\d+", "n", p.problem) for p in problems}) == 3  # all three shapes occur
    assert evaluate("(3 + 4) * 5") == 35 and evaluate("3 + 4 * 5") == 23 and evaluate("3 * 4 - 5") == 7


# ----------------------------------------------------------------------------- prompts
class ChatTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


def test_prompt_templates():
    arith = Problem("a", "What is 2 + 3?", "5", 0.0, "arith")
    math = Problem("m", "Find x.", "2", 0.5, "math500")
    suffix = "Let's think step by step and output the final answer within \\boxed{}."
    fewshot = ("Question: What is 3 + 5?\nAnswer: 3 + 5 = 8. The answer is \\boxed{8}.\n\n"
               "Question: What is 6 * 2?\nAnswer: 6 * 2 = 12. The answer is \\boxed{12}.\n\n"
               "Question: What is 2 + 3?\nAnswer:")
    auto = PromptConfig()
    assert P.build_prompt(arith, ChatTokenizer(), auto) == fewshot  # the data set's own template wins
    assert P.build_prompt(math, ChatTokenizer(), auto) == f"<user>Find x. {suffix}</user><assistant>"
    assert P.build_prompt(math, SimpleNamespace(chat_template=None), auto) == f"Find x. {suffix}\n"
    assert P.build_prompt(arith, ChatTokenizer(), PromptConfig(template="plain", suffix="")) == "What is 2 + 3?\n"
    assert P.build_prompt(math, None, PromptConfig(template="fewshot")).endswith("Question: Find x.\nAnswer:")
    assert P.stop_strings(auto, [arith, math]) == ["\n\nQuestion"]
    assert P.stop_strings(auto, [math]) == [] and P.stop_strings(PromptConfig(template="chat"), [arith]) == []
    with pytest.raises(ValueError, match="no chat template"):
        P.build_prompt(math, SimpleNamespace(chat_template=None), PromptConfig(template="chat"))
    with pytest.raises(ValueError, match="prompt template 'fancy' unknown"):
        P.build_prompt(math, None, PromptConfig(template="fancy"))


# Chat templates written into a copy of the embedded model's tokenizer folder (expected prompts by hand below).
QWEN = ("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
        "{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        "<|im_end|>\n' }}{%- endif %}{%- for message in messages %}{%- if not (message.role == 'system' and loop.first)"
        " %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}")
LLAMA = ("<|begin_of_text|>{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set messages"
         " = messages[1:] %}{% else %}{% set sys = '' %}{% endif %}<|start_header_id|>system<|end_header_id|>\n\nCutting "
         "Knowledge Date: December 2023\n\n{{ sys }}<|eot_id|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
         "<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
         "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
NO_SYSTEM_ROLE = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                  "{% endif %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
                  "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
UNLIKE_TURNS = ("{% if messages[0]['role'] == 'system' %}[SYS]{{ messages[0]['content'] }}[/SYS]\n{% set messages = "
                "messages[1:] %}{% else %}[SYS]Default helper.[/SYS]\n{% endif %}{% for m in messages %}<{{ m['role'] }}>"
                "{{ m['content'] }}</{{ m['role'] }}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture
def chat_tokenizer(tmp_path, default_model_path):
    import shutil
    from transformers import AutoTokenizer

    def make(template):
        folder = tmp_path / f"tok{len(os.listdir(tmp_path))}"
        folder.mkdir()
        for name in os.listdir(default_model_path):
            if name.startswith(("tokenizer", "special_tokens")):
                shutil.copy(os.path.join(default_model_path, name), folder)
        (folder / "chat_template.jinja").write_text(template)
        return AutoTokenizer.from_pretrained(folder)
    return make


def test_chat_prompts_have_no_system_turn_unless_one_is_asked_for(chat_tokenizer, default_model_path):
    from transformers import AutoTokenizer
    math = Problem("m", "Find x.", "2", 0.5, "math500")
    user = "Find x. Let's think step by step and output the final answer within \\boxed{}."
    chatml_user = f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    none, default, brief = PromptConfig(), PromptConfig(system_prompt="default"), PromptConfig(system_prompt="Be brief.")
    qwen = chat_tokenizer(QWEN)
    assert P.build_prompt(math, qwen, none) == chatml_user
    assert P.build_prompt(math, qwen, default) == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are "
                                                   "a helpful assistant.<|im_end|>\n" + chatml_user)
    assert P.build_prompt(math, qwen, brief) == "<|im_start|>system\nBe brief.<|im_end|>\n" + chatml_user
    smollm = AutoTokenizer.from_pretrained(default_model_path)  # its own template adds "You are ... named SmolLM"
    assert "SmolLM" in P.build_prompt(math, smollm, default) and P.build_prompt(math, smollm, none) == chatml_user
    plain_chatml = chat_tokenizer(CHATML)  # adds nothing of its own: unchanged
    assert P.build_prompt(math, plain_chatml, none) == P.build_prompt(math, plain_chatml, default) == chatml_user
    llama = chat_tokenizer(LLAMA)
    assert P.build_prompt(math, llama, none) == (f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{user}"
                                                 "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "Cutting Knowledge Date: December 2023\n\nBe brief.<|eot_id|>" in P.build_prompt(math, llama, brief)
    gemma = chat_tokenizer(NO_SYSTEM_ROLE)
    assert P.build_prompt(math, gemma, none) == f"<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n"
    with pytest.raises(ValueError, match="takes no system turn"):
        P.build_prompt(math, gemma, brief)
    with pytest.raises(ValueError, match="default system turn that could not be located.*--system-prompt default"):
        P.build_prompt(math, chat_tokenizer(UNLIKE_TURNS), none)
    assert P.build_prompt(math, None, PromptConfig(template="plain", system_prompt="Be brief.")) == \
        f"Be brief.\n\n{user}\n"


# ----------------------------------------------------------------------------- estimated difficulty
def test_estimate_difficulty_is_cached_by_id(tmp_path):
    problems = [Problem(f"p{i}", "q", "1", None, "s") for i in range(3)]
    calls = []

    def pass_rate(batch, k):
        calls.append(([p.id for p in batch], k))
        return [{"p0": 1.0, "p1": 0.25, "p2": 0.0, "p3": 0.5}[p.id] for p in batch]
    cache = str(tmp_path / "difficulty.json")
    assert [p.difficulty for p in P.estimate_difficulty(problems, pass_rate, 4, cache)] == [0.0, 0.75, 1.0]
    more = problems + [Problem("p3", "q", "1", 0.2, "s")]
    assert [p.difficulty for p in P.estimate_difficulty(more, pass_rate, 4, cache)] == [0.0, 0.75, 1.0, 0.5]
    assert calls == [(["p0", "p1", "p2"], 4), (["p3"], 4)]  # the second call only samples the new problem
    P.estimate_difficulty(more, pass_rate, 8, cache)
    assert calls[-1] == (["p0", "p1", "p2", "p3"], 8)  # another k is estimated again
    assert json.loads(open(cache).read()) == {"k": 8, "difficulty": {"p0": 0.0, "p1": 0.75, "p2": 1.0, "p3": 0.5}}
    with pytest.raises(ValueError, match="gave 1 rates for 3 problems"):
        P.estimate_difficulty(problems, lambda batch, k: [0.5], 2, None)


def test_every_fewshot_template_is_registered_with_its_stop_and_a_system_prompt_goes_first():
    assert set(P.SOURCE_TEMPLATES.values()) <= set(P.TEMPLATES) and set(P.FEWSHOT_PREFIXES) <= set(P.TEMPLATES)
    words = Problem("w", "Sam has 2 coins. How many coins does Sam have?", "2", 0.0, "words")
    for template, prefix in P.FEWSHOT_PREFIXES.items():
        cfg = PromptConfig(template=template, system_prompt="Be brief.")
        assert P.build_prompt(words, None, cfg) == f"Be brief.\n\n{prefix}Question: {words.problem}\nAnswer:"
        assert P.stop_strings(cfg, [words]) == ["\n\nQuestion"]
    assert P._template(words, PromptConfig()) == "fewshot-cot"  # the source's own, as arith's is fewshot
    assert [p.id for p in P.builtin_problems("arith2", 3, seed=0)] == ["arith-2-0", "arith-2-1", "arith-2-2"]
    assert P.builtin_problems("arithmetic", 3, seed=0) is None
    assert P.builtin_problems("words", 2, seed=0)[-1].id == "words-4-1"
