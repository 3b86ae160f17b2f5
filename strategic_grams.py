r"""Strategic grams (SGs): planning-token masks and the hierarchy metrics (building an SG list: sg_build.py).

HICRA ("Emergent Hierarchical Reasoning in LLMs through Reinforcement Learning") calls response tokens inside
a strategic gram (an n-gram that steers reasoning: "let's try a different approach", "wait") planning tokens,
all others execution tokens. Default SGs: the paper's Appendix A (data/strategic_grams_hicra.json).

Text and offsets. A response's text is the UTF-8 decode (errors="surrogateescape": a byte outside valid UTF-8,
e.g. half a character cut by truncation, becomes one character) of its tokens' concatenated bytes. A token is
a planning token iff one of its bytes lies inside a match; `spans` gives character offsets into its input.
Nothing is re-tokenised: token bytes are read from the vocabulary once per tokenizer. Byte-level BPE (GPT-2,
Qwen, Llama-3, SmolLM2; decoder ByteLevel): GPT-2's byte->unicode map inverted, so a token holding part of a
multi-byte character owns those bytes. SentencePiece style (decoder Metaspace, or Replace '▁' + ByteFallback):
'▁' -> ' ', '<0xHH>' -> that byte; a response's first '▁' stays a space (the response continues its prompt).
Special tokens and ids past the vocabulary have no bytes; other tokenizers: tokenizer.decode([id]).

Matching. Grams are lower-cased, whitespace runs collapsed, ’ -> '. A gram matches case-insensitively, its
spaces match any whitespace run and its apostrophes ' or ’; where a gram begins (ends) with a word character
(\w) the text character before (after) the match must not be one ("but" never matches in "button"; "hmm,"
and "## step" match wherever they occur). Matches are leftmost-longest, non-overlapping: scanning left to
right, the match ending furthest wins and scanning resumes after it. One regex built from a trie of the grams
does this in one pass (at each node the continuations, which begin with disjoint characters, are tried before
the gram ending there). A batch is gathered into one string with numpy (responses joined by NUL, which no
gram contains), matched once, and match byte offsets are mapped to tokens through cumulative byte lengths.

Metrics (entropies in nats, the unit of token entropy; divide by ln 2 for bits):
  semantic entropy H(S) = -sum_g p(g) ln p(g), p(g) = #matches of SG g / #SG matches in the batch;
  conditional entropy H(P|S) = -sum_{g,w} p(g,w) ln p(w|g), w = the n words that follow a match of g;
  planning ratio; mean entropy and perplexity exp(-mean log p) of planning and of execution tokens;
  pass_at_8: unbiased pass@8 per sampled group of G >= 8, averaged (HICRA Fig. 8);
  planning_high_entropy_frac / high_entropy_planning_frac: overlap of planning tokens with the step's top 30%
  of token entropy, from both sides (HICRA Fig. 9/10); text_metrics: semantic and conditional entropy.
  train.py computes them over every response sampled in a step, dynamic sampling's dropped groups included.
Deliberate deviation from the paper:
  - the procedural n-gram (undefined in the paper) is the n words (\w+ or one punctuation mark) after a match.

Run:
  python strategic_grams.py show "Wait, let me check." [--model PATH] [--grams PATH]
  python strategic_grams.py --bench
"""
import argparse
import functools
import itertools
import json
import math
import os
import random
import re
import sys
import timeit
from collections import Counter

import numpy as np
import torch
from transformers import AutoTokenizer

import model
from eval import pass_at_k

DEFAULT_GRAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "strategic_grams_hicra.json")
SEPARATOR = b"\x00"  # joins the responses of a batch; no gram contains it, so no match crosses it
_WORD = re.compile(r"\w")
_PROCEDURE_WORD = re.compile(r"\w+|[^\w\s]")  # a word of the procedural n-gram after an SG
_NGRAM_WORD = re.compile(r"[\"'(\[{“‘]*[^\W\d_]+(?:['-][^\W\d_]+)*[\"')\]}”’.,;:!?]*")  # a token allowed in an SG
_OUTER_PUNCT = "\"'()[]{}“”‘’.,;:!?"


def normalize_gram(gram: str) -> str:
    return " ".join(gram.lower().replace("’", "'").split())


def load_grams(path: str | None = None, drop: float = 0.0, seed: int = 0) -> list[str]:
    """Normalised grams (duplicates dropped, order kept) of the paper's file, an sg_build.py output
    ({"grams": [...]}) or a JSON list; None -> the paper's list. drop > 0 keeps a random round((1 - drop) * n)
    of them, chosen by `seed`, in file order (HICRA's SG-sensitivity run: drop = 0.3)."""
    if not 0 <= drop < 1:
        raise ValueError(f"--grams-drop must be in [0, 1), got {drop}")
    path = path or DEFAULT_GRAMS
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ValueError(f"{path}: cannot read the SG file ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    data = data.get("grams") if isinstance(data, dict) else data
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of grams or an object with a 'grams' list")
    for i, gram in enumerate(data):
        if not isinstance(gram, str) or not normalize_gram(gram) or "\x00" in gram:
            raise ValueError(f"{path}: grams[{i}] is {gram!r}, expected a non-empty string without NUL")
    grams = list(dict.fromkeys(normalize_gram(g) for g in data))
    if drop:
        kept = set(random.Random(seed).sample(range(len(grams)), max(1, round((1 - drop) * len(grams)))))
        grams = [g for i, g in enumerate(grams) if i in kept]
    return grams


def _trie_regex(node: dict, last: str) -> str:
    """Regex of a trie node: continuations first (longest match), then the end of a gram (key '')."""
    unit_regex = {" ": r"\s+", "'": "['’]"}
    branches = [unit_regex.get(unit, re.escape(unit)) + _trie_regex(child, unit)
                for unit, child in sorted(node.items()) if unit]
    if "" in node:
        branches.append(r"(?!\w)" if _WORD.match(last) else "")
    return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"


class GramMatcher:
    """Leftmost-longest, case-insensitive, word-bounded matches of a gram list in text (see the top)."""

    def __init__(self, grams: list[str]):
        self.grams = list(dict.fromkeys(normalize_gram(g) for g in grams))
        if not self.grams or not all(self.grams) or any("\x00" in g for g in self.grams):
            raise ValueError("strategic_grams: the gram list is empty or has an empty gram or a NUL character")
        trie = {}  # {character: subtrie}; the key "" ends a gram
        for gram in self.grams:
            functools.reduce(lambda node, unit: node.setdefault(unit, {}), gram, trie)[""] = {}
        # a gram starting with a word character needs a non-word character before it: one look-behind for all
        roots = [{u: child for u, child in trie.items() if bool(_WORD.match(u)) == word} for word in (True, False)]
        parts = [before + _trie_regex(root, "") for before, root in zip([r"(?<!\w)", ""], roots) if root]
        self.regex = re.compile("|".join(parts), re.IGNORECASE)

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """(char start, char end, gram) of every match, left to right."""
        return [(m.start(), m.end(), normalize_gram(m.group())) for m in self.regex.finditer(text)]

    def matched_grams(self, texts: list[str]) -> list[list[str]]:
        """The SGs matched in each text, in order of occurrence."""
        return [[normalize_gram(m.group()) for m in self.regex.finditer(text)] for text in texts]


# ----------------------------------------------------------------------------- planning-token masks

def vocabulary_bytes(tokenizer) -> list[bytes]:
    """The bytes each token id adds to decoded text (index = id); see the top docstring."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    state = json.loads(decoder.__getstate__()) if decoder is not None else {}
    parts = state.get("decoders", []) if state.get("type") == "Sequence" else [state]
    kinds = {p.get("type") for p in parts}
    spaces = [p["replacement"] for p in parts if p.get("type") == "Metaspace"]
    spaces += [p["pattern"].get("String") for p in parts if p.get("type") == "Replace" and p.get("content") == " "]
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]  # GPT-2's byte -> character map, inverted
    byte_of_char = {chr(b): b for b in printable} | \
                   {chr(256 + i): b for i, b in enumerate(b for b in range(256) if b not in printable)}
    vocab = tokenizer.get_vocab()  # {piece: id}, added tokens included
    added = getattr(tokenizer, "added_tokens_decoder", {})  # {id: AddedToken}
    table = [b""] * (max(vocab.values()) + 1)
    for piece, i in vocab.items():
        if i in added:  # literal text, or no text at all for special tokens
            table[i] = b"" if added[i].special else added[i].content.encode()
        elif "ByteLevel" in kinds and all(c in byte_of_char for c in piece):
            table[i] = bytes(byte_of_char[c] for c in piece)
        elif spaces:
            byte = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece) if "ByteFallback" in kinds else None
            table[i] = bytes([int(byte[1], 16)]) if byte else piece.replace(spaces[0], " ").encode()
        else:
            table[i] = tokenizer.decode([i]).encode()
    return table


class PlanningMasker(GramMatcher):
    """Token-level planning masks for one tokenizer and one gram list (vocabulary bytes precomputed)."""

    def __init__(self, tokenizer, grams: list[str]):
        super().__init__(grams)
        table = vocabulary_bytes(tokenizer) + [SEPARATOR, b""]  # two pseudo tokens: separator, no text
        self.separator_id, self.empty_id = len(table) - 2, len(table) - 1
        self.token_len = np.array([len(b) for b in table], dtype=np.int64)  # (V + 2,)
        self.token_offset = np.cumsum(self.token_len) - self.token_len  # (V + 2,) start in token_bytes
        self.token_bytes = np.frombuffer(b"".join(table), dtype=np.uint8)  # (sum of token lengths,)

    def _ids(self, row, b: int = 0) -> np.ndarray:
        ids = np.asarray(row, dtype=np.int64).reshape(-1)  # (T,)
        if ids.size and ids.min() < 0:
            raise ValueError(f"strategic_grams: response {b} has a negative token id ({ids.min()})")
        return np.where(ids < self.separator_id, ids, self.empty_id)  # ids past the vocabulary: no text

    def _bytes(self, ids: np.ndarray) -> tuple[bytes, np.ndarray]:
        """(concatenated token bytes, (N,) byte offset after each token) of valid ids (N,)."""
        lengths = self.token_len[ids]  # (N,)
        ends = np.cumsum(lengths)  # (N,)
        # byte p of the output is byte p - start(j) of its token j: one gather for the whole batch
        gather = np.repeat(self.token_offset[ids] - (ends - lengths), lengths) + np.arange(ends[-1] if len(ends) else 0)
        return self.token_bytes[gather].tobytes(), ends

    def decode(self, ids) -> str:
        """A response's text as defined at the top (the string a mask's matches are found in)."""
        return self._bytes(self._ids(ids))[0].decode("utf-8", "surrogateescape")

    def masks(self, responses) -> list[np.ndarray]:
        """One bool array per response (its length): True where a token has a byte inside an SG match."""
        rows = [self._ids(row, b) for b, row in enumerate(responses)]
        if not rows:
            return []
        ids = np.concatenate([part for row in rows for part in (row, [self.separator_id])])  # (N,) rows + separators
        blob, ends = self._bytes(ids)
        starts = ends - self.token_len[ids]  # (N,)
        text = blob.decode("utf-8", "surrogateescape")
        found = np.array([m.span() for m in self.regex.finditer(text)], dtype=np.int64).reshape(-1, 2)  # (M, 2)
        if len(text) != len(blob):  # multi-byte characters: char offset -> byte offset
            codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)  # (chars,)
            escaped = (codepoints >= 0xDC80) & (codepoints <= 0xDCFF)  # one undecodable byte each
            char_len = 1 + (codepoints >= 0x80) + (codepoints >= 0x800) + (codepoints >= 0x10000) - 2 * escaped
            found = np.concatenate([[0], np.cumsum(char_len)])[found]  # (M, 2) byte offsets
        first = np.searchsorted(ends, found[:, 0], side="right")  # (M,) first token ending after the start
        stop = np.searchsorted(starts, found[:, 1], side="left")  # (M,) first token starting at/after the end
        inside = np.cumsum(np.bincount(first, minlength=len(ids) + 1) - np.bincount(stop, minlength=len(ids) + 1))
        planning = (inside[:-1] > 0) & (self.token_len[ids] > 0)  # (N,) a token without bytes has no character
        row_starts = np.cumsum([0] + [len(row) + 1 for row in rows])  # each row is followed by a separator
        return [planning[s:s + len(row)] for s, row in zip(row_starts, rows)]

    def mask(self, responses, T: int | None = None) -> torch.Tensor:
        """(B, T) bool planning mask, right-padded with False; T defaults to the longest response."""
        masks = self.masks(responses)
        T = max((len(m) for m in masks), default=0) if T is None else T
        out = torch.zeros(len(masks), T, dtype=torch.bool)  # (B, T)
        for b, m in enumerate(masks):
            if len(m) > T:
                raise ValueError(f"strategic_grams: response {b} has {len(m)} tokens, more than T={T}")
            out[b, :len(m)] = torch.from_numpy(m)
        return out


# ----------------------------------------------------------------------------- metrics

def _entropy(counts) -> float:
    """Shannon entropy (nats) of a histogram; 0.0 when it is empty."""
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c) if total else 0.0


def semantic_entropy(matched: list[list[str]]) -> float:
    """H(S) = -sum_g p(g) ln p(g) over all SG matches of a batch (`matched_grams` output), in nats."""
    return _entropy(Counter(g for grams in matched for g in grams).values())


def conditional_entropy(texts: list[str], masker_or_grams, n: int = 3) -> float:
    """H(P|S) = -sum_{g,w} p(g,w) ln p(w|g) in nats, w = the n words after a match of SG g (fewer: skipped)."""
    matcher = masker_or_grams if isinstance(masker_or_grams, GramMatcher) else GramMatcher(list(masker_or_grams))
    pairs, per_gram = Counter(), Counter()  # (gram, following words) -> count, gram -> count
    for text in texts:
        for m in matcher.regex.finditer(text):
            following = tuple(w.group().lower() for w in itertools.islice(_PROCEDURE_WORD.finditer(text, m.end()), n))
            if len(following) == n:
                pairs[normalize_gram(m.group()), following] += 1
                per_gram[normalize_gram(m.group())] += 1
    return _entropy(pairs.values()) - _entropy(per_gram.values())  # H(P|S) = H(S, P) - H(S)


def planning_token_ratio(planning_mask: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T), (B, T) -> 0-dim #(planning & valid) / #valid (NaN when no token is valid)."""
    valid = mask.bool()  # (B, T)
    return (planning_mask.bool() & valid).sum().float() / valid.sum().float()


def hierarchy_token_stats(entropy: torch.Tensor, logprobs: torch.Tensor, planning_mask: torch.Tensor,
                          mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """All (B, T) -> 0-dim planning_entropy, execution_entropy (mean entropy), planning_ppl, execution_ppl
    (exp(-mean log p)); an empty set gives NaN. Pad positions are excluded by selection: NaN/inf there can't leak."""
    valid, planning = mask.bool(), planning_mask.bool()  # (B, T)
    stats = {}
    for name, chosen in (("planning", planning & valid), ("execution", ~planning & valid)):  # (B, T)
        count = chosen.sum().float()  # 0-dim; 0/0 = NaN for an empty set
        stats[f"{name}_entropy"] = torch.where(chosen, entropy.float(), 0.0).sum() / count
        stats[f"{name}_ppl"] = torch.exp(-torch.where(chosen, logprobs.float(), 0.0).sum() / count)
    return stats


def pass_at_8(correct: list[list[bool]], k: int = 8) -> float:
    """Unbiased pass@k (eval.pass_at_k, k = 8) of every sampled group with at least k responses, averaged over
    those groups (HICRA Fig. 8); NaN when no group has k responses."""
    rates = [pass_at_k(len(group), sum(group), k) for group in correct if len(group) >= k]
    return sum(rates) / len(rates) if rates else float("nan")


def high_entropy_planning_stats(entropy: torch.Tensor, planning_mask: torch.Tensor, mask: torch.Tensor,
                                top: float = 0.3) -> dict[str, torch.Tensor]:
    """All (B, T), every response sampled in a step -> 0-dim (HICRA Fig. 9/10):
        planning_high_entropy_frac = #(planning & high) / #planning     planning tokens that are high-entropy
        high_entropy_planning_frac = #(planning & high) / #high         high-entropy tokens that are planning
    high = the floor(top * N + 1/2) highest-entropy of the step's N valid tokens (ties: the earlier token in
    row-major order). An empty denominator gives NaN; pads are excluded by selection."""
    valid, planning = mask.bool(), planning_mask.bool()  # (B, T)
    scores = torch.where(valid, entropy.float(), float("-inf")).reshape(-1)  # (B*T,) pads sort last
    order = torch.sort(scores, descending=True, stable=True).indices  # (B*T,)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel()))  # (B*T,) place in that order
    high = (rank.view(valid.shape) < torch.floor(valid.sum() * top + 0.5)) & valid  # (B, T)
    both = (high & planning).sum().float()  # 0-dim
    return {"planning_high_entropy_frac": both / (planning & valid).sum().float(),
            "high_entropy_planning_frac": both / high.sum().float()}


def text_metrics(texts: list[str], matcher: GramMatcher, n: int = 3) -> dict[str, float]:
    """semantic_entropy and conditional_entropy (nats) over every response text sampled in a step."""
    return {"semantic_entropy": semantic_entropy(matcher.matched_grams(texts)) + 0.0,  # + 0.0: never "-0"
            "conditional_entropy": conditional_entropy(texts, matcher, n) + 0.0}


# ----------------------------------------------------------------------------- command line

def show(text: str, model_path: str | None = None, grams_path: str | None = None):
    """Print `text` with runs of planning tokens in [[...]], then the matched grams."""
    tokenizer = AutoTokenizer.from_pretrained(model.resolve_path(model_path))  # an HF folder's or the default's
    masker = PlanningMasker(tokenizer, load_grams(grams_path))
    ids = tokenizer.encode(text, add_special_tokens=False)
    planning = masker.masks([ids])[0]
    marked = []
    for is_planning, run in itertools.groupby(zip(ids, planning), key=lambda pair: pair[1]):
        piece = masker.decode([i for i, _ in run]).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        marked.append(f"[[{piece}]]" if is_planning else piece)
    print("".join(marked) + f"\n{int(planning.sum())}/{len(ids)} planning tokens; grams: {masker.matched_grams([text])[0]}")


def bench():
    from sg_build import synthetic_solutions  # the benchmark's corpus (imported here: sg_build imports this file)
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model.resolve_path(None))
    grams = load_grams()
    masker = PlanningMasker(tokenizer, grams)
    texts = synthetic_solutions(64, [[g] for g in grams], seed=1, rate=0.5, sentences=400, zipf=1.0)
    stream = np.concatenate([tokenizer.encode(t, add_special_tokens=False) for t in texts])
    B, T = 256, 4096
    responses = [stream[o:o + T] for o in np.random.default_rng(0).integers(0, len(stream) - T, size=B)]
    seconds = min(timeit.repeat(lambda: masker.masks(responses), number=1, repeat=3))
    print(f"mask: {B * T / seconds:.0f} tokens/s ({B} x {T} tokens in {seconds:.2f} s, SmolLM2 tokenizer, 1 thread, "
          f"best of 3; {np.concatenate(masker.masks(responses)).mean():.1%} planning tokens)")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Strategic grams: show planning tokens, benchmark (SG lists: sg_build.py).")
    parser.add_argument("--bench", action="store_true", help="mask throughput (the build time: sg_build.py --bench)")
    commands = parser.add_subparsers(dest="command")
    show_parser = commands.add_parser("show", help="print a text with its planning tokens marked [[...]]")
    show_parser.add_argument("text", help="the text to mark")
    show_parser.add_argument("--model", default=None, help="HF model folder whose tokenizer to use (default: embedded)")
    show_parser.add_argument("--grams", default=None, help="SG JSON file (default: the paper's list in data/)")
    args = parser.parse_args(argv)
    try:
        if args.bench:
            bench()
        elif args.command == "show":
            show(args.text, args.model, args.grams)
        else:
            parser.print_help()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
