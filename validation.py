"""Validation during training: problems held out of the training data, scored by eval.py's evaluate().

validation_set picks them, disjoint from the training data: either held out of it (removed from training together
with every problem of the same normalised text) or drawn from other data (--eval-data), where any overlap, by id
or by normalised problem text, is a ValueError that names it (check_disjoint). train.py then calls
validate(model, tokenizer, problems, cfg, rank, world, sampler=its sampler) every --eval-every steps: no files
written, the caller's sampler (whose KV pool and decode graphs exist already) reused.
"""
import random
from typing import Optional

from eval import EvalConfig, evaluate, make_sampler
from problems import load_problems
from rollout import Sampler


def validate(model, tokenizer, problems, cfg: Optional[EvalConfig] = None, rank: int = 0, world_size: int = 1,
             sampler: Optional[Sampler] = None) -> dict:
    """Periodic validation for train.py: problems (a list, or {name: list}) sharded over ranks, no files.

    sampler: the caller's rollout.Sampler over `model` (its KV pool and decode graphs are reused, and its
    EngineConfig applies instead of cfg's engine fields); default: one made here for this call. The model is used
    as given (cfg.precision and cfg.attn apply to eval.py's own loading only).
    Returns evaluate's results on every rank; results["average"] holds pass@1, pass@k, maj@k, length, truncated.
    """
    cfg = cfg or EvalConfig(progress=False)
    problems_by_benchmark = problems if isinstance(problems, dict) else {"val": list(problems)}
    was_training = model.training
    model.eval()
    try:
        return evaluate(make_sampler(model, tokenizer, cfg, sampler), problems_by_benchmark, cfg, None, rank,
                        world_size)
    finally:
        model.train(was_training)


def normalized_problem(text: str) -> str:
    """A problem's text for overlap checks: lower-cased, whitespace runs collapsed."""
    return " ".join(text.lower().split())


def check_disjoint(validation: list, training: list, where: str = "--eval-data") -> None:
    """ValueError naming the validation problems that are also training problems, by id or by normalised text."""
    ids, texts = {p.id for p in training}, {normalized_problem(p.problem) for p in training}
    same_id = [p.id for p in validation if p.id in ids]
    same_text = [f"{p.id} ({p.problem[:40]!r})" for p in validation
                 if p.id not in ids and normalized_problem(p.problem) in texts]
    if same_id or same_text:
        raise ValueError(f"{where}: {len(same_id) + len(same_text)} of {len(validation)} validation problems are also "
                         f"training problems (same id: {same_id[:5]}; same problem text: {same_text[:3]}): validate on "
                         "other data, or leave --eval-data unset to hold problems out of the training data")


def validation_set(training: list, n: int, seed: int, eval_data: Optional[str] = None) -> tuple[list, list]:
    """(training problems, n validation problems) disjoint by id and normalised text. Without eval_data, n problems
    drawn by `seed` are held out of the training data, which loses them and every problem of the same text;
    with it, n problems drawn from eval_data, which must not overlap the training data (check_disjoint)."""
    if n < 1:
        raise ValueError(f"--eval-limit must be >= 1, got {n}")
    rng = random.Random(seed)
    if eval_data is None:
        held_out = rng.sample(training, min(n, len(training) - 1))
        texts = {normalized_problem(p.problem) for p in held_out}
        kept = [p for p in training if normalized_problem(p.problem) not in texts]
        if not kept:
            raise ValueError(f"holding {len(held_out)} validation problems out leaves no training data; lower "
                             "--eval-limit or give --eval-data")
        return kept, held_out
    pool = load_problems(eval_data, seed=seed + 1, verbose=False)
    held_out = rng.sample(pool, min(n, len(pool)))
    check_disjoint(held_out, training, f"--eval-data {eval_data}")
    return training, held_out
