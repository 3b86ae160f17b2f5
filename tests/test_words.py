"""The built-in word problems (problems.word_problems, --data words): answers recomputed by an independent
reader of the text, the shape of each level, variety, determinism, the levels every curriculum makes of them,
and the chain-of-thought few-shot examples (right answers, right arithmetic, planning phrases)."""
import re
from collections import Counter

import pytest

import problems as P
from curriculum import Curriculum, make_schedule
from reward import extract_answer, validate_gold
from strategic_grams import GramMatcher, load_grams

CONNECTORS = r"(?:Then |After that, |Later, |In the afternoon, )?"


def read_story(text: str) -> tuple[int, list[str]]:
    """An independent reading: the question names the object (and person) asked about; "X has N obj" sets X's
    count, "X has N more/fewer obj than Y" derives it, a sentence about X with "more" adds N, any other sentence
    about X and the object takes N away, and sentences about another object or an age change nothing.
    Returns (answer, the kinds of the sentences read: set / compare / gain / loss / distractor)."""
    *facts, question = re.findall(r"[^.?]+[.?]", text)
    asked = re.fullmatch(r" ?How many (\w+) (?:do they have together|does (\w+) (?:have now|have at the end|end "
                         r"up with|have))\?", question)
    assert asked, question
    obj, person = asked[1], asked[2]
    counts, kinds = {}, []
    for sentence in facts:
        for clause in sentence.strip().rstrip(".").split(" and "):
            who, rest = re.fullmatch(CONNECTORS + r"(\w+) (.+)", clause).groups()
            n = int(re.search(r"\d+", rest)[0])
            if not re.search(rf"\b{obj}\b", rest) or "years" in rest:
                kinds.append("distractor")
            elif "than" in rest:
                base = counts[re.search(r"than (\w+)", rest)[1]]
                counts[who] = base + n if " more " in rest else base - n
                kinds.append("compare")
            elif rest.startswith("has "):
                counts[who] = n  # kept for everyone; one nobody asks about or compares with is a distractor
                kinds.append("set" if person in (None, who) or f"than {who}" in text else "distractor")
            else:
                counts[who] += n if re.search(r"\bmore\b", rest) else -n
                kinds.append("gain" if re.search(r"\bmore\b", rest) else "loss")
                assert counts[who] >= 0, text  # nobody gives away what they do not have
    answer = sum(counts.values()) if person is None else counts[person]
    return answer, kinds


@pytest.mark.parametrize("level, changes", [(1, 1), (2, 2), (3, 3), (4, 2)])
def test_answers_and_the_shape_of_each_level(level, changes):
    problems = P.word_problems(level, 300, seed=1)
    assert problems == P.word_problems(level, 300, seed=1) != P.word_problems(level, 300, seed=2)
    assert [p.id for p in problems] == [f"words-{level}-{i}" for i in range(300)]
    shapes = Counter()
    for p in problems:
        answer, kinds = read_story(p.problem)
        assert p.answer == str(answer) and answer >= 0 and validate_gold(p.answer) is None, p.problem
        assert p.difficulty == (level - 1) / 4 and p.source == "words"
        moves = kinds.count("gain") + kinds.count("loss")
        if level == 1 and moves == 0:  # the one-step comparison forms
            assert kinds in (["set", "compare"], ["set", "set"]), p.problem
        else:
            assert moves == changes and kinds[0] == "set", p.problem
            assert kinds.count("distractor") == (level == 4), p.problem
        numbers = [int(x) for x in re.findall(r"\d+", p.problem)]
        assert all(2 <= x <= 12 for x in numbers), p.problem
        shapes[re.sub(r"\b(?:\d+|" + "|".join(P.NAMES + P.OBJECTS) + r")\b", "_", p.problem)] += 1
    # not one template: many sentence shapes, none of them most of the level
    assert len(shapes) >= {1: 15, 2: 60, 3: 100, 4: 100}[level] and max(shapes.values()) < 0.2 * len(problems)


def test_the_reader_itself_on_hand_written_stories():
    assert read_story("Sam has 4 coins. Sam gets 3 more coins. Then Sam gives 2 coins to Mia. "
                      "How many coins does Sam have now?") == (5, ["set", "gain", "loss"])
    assert read_story("Ana has 6 shells. Tom has 2 fewer shells than Ana. How many shells does Tom have?") == \
        (4, ["set", "compare"])
    assert read_story("Ana has 6 shells and Tom has 5 shells. How many shells do they have together?") == \
        (11, ["set", "set"])
    assert read_story("Kim has 8 cards. Kim is 9 years old. Leo has 3 cards. Kim also has 4 books. Kim loses 2 "
                      "cards. How many cards does Kim have at the end?") == \
        (6, ["set", "distractor", "distractor", "distractor", "loss"])


def test_load_problems_resolves_the_family_and_single_levels():
    words = P.load_problems("words", builtin_per_level=10, seed=3, verbose=False)
    assert Counter(p.difficulty for p in words) == {0.0: 10, 0.25: 10, 0.5: 10, 0.75: 10}
    assert words[10:20] == P.word_problems(2, 10, seed=3)
    assert P.load_problems("words3", builtin_per_level=5, verbose=False) == P.word_problems(3, 5, seed=0)
    assert P.load_problems("arith4", builtin_per_level=5, verbose=False) == P.arithmetic_problems(4, 5, seed=0)
    assert len(P.load_problems("words1,arith", builtin_per_level=4, verbose=False)) == 4 + 5 * 4
    with pytest.raises(ValueError, match=r"word problem level 7 does not exist \(levels are 1\.\.4\)"):
        P.load_problems("words7", verbose=False)
    with pytest.raises(ValueError, match="repeated"):
        P.load_problems("words,words2", verbose=False)
    with pytest.raises(ValueError, match=r"no_such\.jsonl .*built in: arith, words"):
        P.load_problems("no_such", verbose=False)


@pytest.mark.parametrize("schedule, levels", [
    ("none", [{1, 2, 3, 4}]), ("deepscaler", [{1, 2, 3, 4}] * 3), ("adaptive", [{1}, {2}, {3}, {4}]),
    ("hgrpo1", [{1, 2}, {3}, {4}, {2, 3, 4}]), ("hgrpo2", [{1, 2}, {3}, {4}, {2, 3, 4}])])
def test_every_curriculum_orders_them(schedule, levels):
    problems = P.load_problems("words", builtin_per_level=20, verbose=False)
    schedule_levels = make_schedule(schedule, total_steps=40, max_len=64, group_size=8, prompts_per_step=4)
    curriculum = Curriculum(problems, schedule_levels, schedule, seed=0, verbose=False)
    assert [{int(problems[i].id.split("-")[1]) for i in pool} for pool in curriculum.pools] == levels


def cot_examples():
    """(question, answer text) of each example of the chain-of-thought prefix."""
    return re.findall(r"Question: (.+?)\nAnswer: (.+?)\n\n", P.COT_PREFIX)


def test_cot_examples_are_right_and_reason_in_words_with_planning_phrases():
    examples = cot_examples()
    assert len(examples) >= 2
    matcher = GramMatcher(load_grams(None))
    for question, answer in examples:
        assert extract_answer(answer) == str(read_story(question)[0]), question
        for left, right in re.findall(r"((?:\d+ [-+] )+\d+) = (\d+)", answer):  # every step's arithmetic holds
            terms = left.split()
            value = int(terms[0]) + sum(int(n) if op == "+" else -int(n) for op, n in zip(terms[1::2], terms[2::2]))
            assert value == int(right), answer
        assert answer.startswith("Let's think step by step.") and answer.endswith(".")
    grams = {g for _, answer in examples for _, _, g in matcher.spans(answer)}
    assert {"let's", "step by step", "need to", "so", "wait", "let me"} <= grams, grams


def test_words_get_the_cot_template_and_its_stop():
    problem = P.word_problems(2, 1, seed=0)[0]
    prompt = P.build_prompt(problem, None, P.PromptConfig())
    assert prompt == P.COT_PREFIX + f"Question: {problem.problem}\nAnswer:"
    assert P.stop_strings(P.PromptConfig(), [problem]) == ["\n\nQuestion"]
    arith = P.arithmetic_problems(1, 1, seed=0)[0]  # arithmetic keeps its own plain few-shot template
    assert P.build_prompt(arith, None, P.PromptConfig()).startswith("Question: What is 3 + 5?\nAnswer: 3 + 5 = 8.")
    assert P.build_prompt(arith, None, P.PromptConfig(template="fewshot-cot")).startswith(P.COT_PREFIX)
