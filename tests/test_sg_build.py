"""sg_build.py: the SG construction pipeline (HICRA Section 2.1) on hand-computed and planted corpora,
its corpus reader and command line."""
import json

import numpy as np
import pytest

import sg_build as sgb
import strategic_grams as sg

PLANTED = [["let's try a different approach", "maybe we should try another method"],  # paraphrase families
           ["wait, let me double-check that step", "hold on, let me verify this"],
           ["but i'm not sure this helps", "however, this might not be useful"]]


def test_read_corpus(tmp_path):
    rows = [{"response": "a", "correct": True}, {"response": "b", "correct": False}, {"solution": "c", "reward": 0.5},
            {"text": "d", "reward": 0}, {"text": "e"}, {"response": "f", "reward": -1.0}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert sgb.read_corpus(str(tmp_path / "c.jsonl")) == ["a", "c", "e"]
    for content, message in [('{"response": "a"}\n{oops', r"c2.jsonl:2: invalid JSON"),
                             ('{"answer": "a"}', r"c2.jsonl:1: expected a str response/solution/text"),
                             ('{"text": "a", "reward": "high"}', r"c2.jsonl:1: expected .* number reward")]:
        (tmp_path / "c2.jsonl").write_text(content)
        with pytest.raises(ValueError, match=message):
            sgb.read_corpus(str(tmp_path / "c2.jsonl"))


# ----------------------------------------------------------------------------- SG construction

def test_solution_ngrams():
    got = sgb.solution_ngrams("Wait, let me check: x = 3. So we are done!", 3, 4)
    # "x", "=", "3." are not words; "check:" ends a clause; outer punctuation is stripped
    assert got == {"wait, let me", "wait, let me check", "let me check", "so we are", "so we are done", "we are done"}


def test_cluster_document_frequency_by_hand():
    solutions = ["let us try now.", "we try again. let us try.", "I am not sure. Let us try!", "the blue car.",
                 "Not sure at all.", "nothing"]
    unit = np.eye(3, dtype=np.float32)  # one direction per family: n-grams with "try", with "not"/"sure", the rest
    embed = lambda grams: np.stack([unit[0 if "try" in g else 1 if "sure" in g or "not" in g else 2] for g in grams])
    cfg = sgb.BuildConfig(min_solutions=1, cluster_size=4, top_fraction=0.5)  # 11 n-grams -> k = 3, keep 2
    result = sgb.build_grams(solutions, cfg, embed=embed)
    assert [c["cluster_df"] for c in result["clusters"]] == [3 / 6, 2 / 6, 1 / 6]  # {0, 1, 2}, {2, 4}, {3}
    try_grams = ["let us try", "let us try now", "us try now", "we try again"]
    sure_grams = ["am not sure", "i am not", "i am not sure", "not sure at", "not sure at all", "sure at all"]
    assert [sorted(c["grams"]) for c in result["clusters"]] == [try_grams, sure_grams, ["the blue car"]]
    assert result["clusters"][0]["gram_df"][0] == 3 / 6  # "let us try" leads its cluster: most frequent
    assert [c["selected"] for c in result["clusters"]] == [True, True, False]
    assert sorted(result["grams"]) == sorted(try_grams + sure_grams)
    with pytest.raises(ValueError, match="no 3- to 5-gram occurs in >= 9"):
        sgb.build_grams(solutions, sgb.BuildConfig(min_solutions=9), embed=embed)
    with pytest.raises(ValueError, match="top_fraction"):
        sgb.BuildConfig(top_fraction=0)


def test_pipeline_selects_planted_phrases_not_arithmetic():
    solutions = sgb.synthetic_solutions(300, PLANTED, seed=0, zipf=1.0)  # filler words then "x + y = z", 3 planted families
    result = sgb.build_grams(solutions, sgb.BuildConfig(min_solutions=3))
    paraphrases = [p for family in PLANTED for p in family]
    assert len(result["clusters"]) > 20  # filler n-grams were candidates too
    assert result["grams"] and all(any(g in p for p in paraphrases) for g in result["grams"]), result["grams"]
    selected = sg.GramMatcher(result["grams"])
    for phrase in paraphrases:  # every planted phrase and paraphrase is caught by the selected SGs
        assert selected.spans(phrase), phrase


def test_cli_build_and_errors(tmp_path, capsys):
    corpus = tmp_path / "rollouts.jsonl"
    corpus.write_text("\n".join(json.dumps({"response": s, "correct": True}) for s in sgb.synthetic_solutions(60, PLANTED)))
    sgb.main(["--corpus", str(corpus), "--out", str(tmp_path / "grams.json"), "--min-solutions", "3"])
    grams = sg.load_grams(str(tmp_path / "grams.json"))  # a valid --grams file
    assert grams and all(any(g in p for family in PLANTED for p in family) for g in grams)
    with pytest.raises(SystemExit) as exit_info:
        sgb.main(["--corpus", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 1 and "missing.jsonl: cannot read the corpus" in capsys.readouterr().err
