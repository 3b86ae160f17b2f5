r"""Error-type dynamics (HICRA Sec. 4.2.1, Listing 2, Fig. 5): why the failed rollouts of a run failed, step by step.

Every failed rollout a run logged (RUN/rollouts.jsonl, written by plot.write_rollouts) goes to a judge model,
sampled by our own sampler (rollout.generate; temperature 0 = greedy by default), with JUDGE_PROMPT: the problem,
the reference solution where the data has one (else the gold answer alone), and the response. The judge answers
one letter in \boxed{}: C is "planning & strategy" (HICRA's planning errors), A, B and D the others. Per step:

    planning = #C        other = #A + #B + #D        unparsed = verdicts with no \boxed{A-D} (counted, never dropped)
    planning_frac = planning / (planning + other)    (NaN when nothing parsed)

Fields read from rollouts.jsonl rows: step, response, correct (required); id, gold, problem (the problem text;
the logged `prompt` when absent) and solution (optional). Rows that are torn, not JSON, not UTF-8 or miss a
required field are skipped, each named by file and line. Responses longer than max_response_chars keep their
head and tail around a "[...]" marker, so the judge prompt fits a small model's context.
Outputs: RUN/error_types.jsonl (one verdict per failed rollout: step, id, verdict, judge response),
RUN/error_types.json (per-step counts and the settings), RUN/error_types.png (matplotlib optional).
Deviation: the exact text of the paper's Listing 2 was not available here; JUDGE_PROMPT is our rewrite of its
four-way classification with C = planning & strategy, and A (comprehension), B (knowledge), D (calculation /
execution) as our reading of the other categories. `--judge default` (the embedded SmolLM2-135M) runs offline
but is a weak judge: expect many unparsed or arbitrary verdicts; use a strong instruct model for real numbers.

    python error_types.py runs/hicra-xxxx --judge /path/to/Qwen2.5-7B-Instruct
    python error_types.py runs/hicra-xxxx --judge default --max-new-tokens 64
"""
import argparse
import dataclasses
import json
import math
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass

import torch

from cli import add_dataclass_args, dataclass_from_args
from model import load_model
from problems import Problem, PromptConfig, build_prompt, read_rows
from reward import extract_answer
from rollout import EngineConfig, SamplingParams, generate

JUDGE_PROMPT = """You are a mathematics teacher analysing a student's incorrect solution.

Problem:
{problem}

{reference}

Student's solution (incorrect):
{response}

What is the main reason the student's solution is wrong? Choose one:
(A) Comprehension: the student misread the problem, its conditions or what it asks for.
(B) Knowledge: the student used a wrong formula, theorem, definition or fact.
(C) Planning & strategy: the student chose a wrong or ineffective approach, did not break the problem into the \
right steps, did not change course when the approach failed, or lost track of the plan.
(D) Calculation & execution: the approach is sound but a computation or manipulation is wrong, or the solution \
is left unfinished.
Explain briefly, then give your final choice as one letter, A, B, C or D, inside \\boxed{{}}."""
CATEGORIES = ("A", "B", "C", "D")
PLANNING = "C"
_VERDICT = re.compile(r"\(?\s*([A-Da-d])\s*\)?(?:[\s.:)]|$)")


@dataclass
class JudgeConfig:
    judge: str = "default"  # judge model: HF-format folder, or 'default' (the embedded SmolLM2-135M-Instruct)
    max_new_tokens: int = 256  # judge response length
    temperature: float = 0.0  # judge sampling temperature (0 = greedy)
    max_response_chars: int = 6000  # longer responses keep their head and tail (the judge's context is finite)
    limit_per_step: int = 0  # judge at most this many failed rollouts per step (0 = all)
    batch: int = 64  # judge prompts per generate call
    max_num_seqs: int = 64  # sampler slots
    seed: int = 0  # sampling seed (chunk i uses seed + i)
    device: str = "auto"  # auto = cuda when available, else cpu


def parse_verdict(text: str) -> str | None:
    """The letter A-D in the last \\boxed{} of a judge response ("C", "(c)", "C. Planning", "\\text{C}"), else None."""
    boxed = extract_answer(text)
    boxed = re.sub(r"\\(?:text|textbf|mathrm)\{([^{}]*)\}", r"\1", boxed).strip() if boxed else None
    match = _VERDICT.match(boxed) if boxed else None
    return match.group(1).upper() if match else None


def read_failed(path: str, limit_per_step: int = 0) -> list[dict]:
    """Failed rollouts of rollouts.jsonl in file order (at most limit_per_step per step); bad rows named, skipped."""
    failed, per_step, skipped = [], Counter(), []
    for location, row in read_rows(path):
        if not isinstance(row, dict) or not all(k in row for k in ("step", "response", "correct")):
            skipped.append(f"{path} {location}: {row if isinstance(row, str) else 'needs step, response, correct'}")
            continue
        if row["correct"] or (limit_per_step and per_step[row["step"]] >= limit_per_step):
            continue
        per_step[row["step"]] += 1
        failed.append(row)
    for message in skipped[:5]:
        print(f"error_types: skipped {message}", file=sys.stderr)
    if len(skipped) > 5:
        print(f"error_types: ... and {len(skipped) - 5} more rows skipped", file=sys.stderr)
    return failed


def judge_text(row: dict, max_chars: int) -> str:
    response = row["response"]
    if len(response) > max_chars:
        response = f"{response[:max_chars // 2]}\n[...]\n{response[-(max_chars - max_chars // 2):]}"
    reference = f"Correct final answer: {row.get('gold', '(not logged)')}"
    if row.get("solution"):
        reference = f"Reference solution:\n{row['solution']}\n\n{reference}"
    return JUDGE_PROMPT.format(problem=row.get("problem") or row.get("prompt", ""), reference=reference,
                               response=response)


def judge(rows: list[dict], model, tokenizer, cfg: JudgeConfig) -> list[dict]:
    """One verdict per row: {step, id, verdict (A-D or None), judge_response}."""
    prompt_cfg = PromptConfig(template="auto", suffix="")
    verdicts = []
    for i in range(0, len(rows), cfg.batch):
        chunk = rows[i:i + cfg.batch]
        texts = [build_prompt(Problem(str(r.get("id", "")), judge_text(r, cfg.max_response_chars), "0", None, "judge"),
                              tokenizer, prompt_cfg) for r in chunk]
        prompts = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
        params = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, n=1,
                                seed=cfg.seed + i // cfg.batch)
        with torch.no_grad():
            samples, _ = generate(model, prompts, params, EngineConfig(max_num_seqs=cfg.max_num_seqs), tokenizer)
        for row, sample in zip(chunk, samples):
            answer = tokenizer.decode(sample.token_ids, skip_special_tokens=True)
            verdicts.append(dict(step=row["step"], id=row.get("id"), verdict=parse_verdict(answer),
                                 judge_response=answer))
    return verdicts


def count_by_step(verdicts: list[dict]) -> list[dict]:
    """Per step: failed, A..D, planning (C), other (A + B + D), unparsed, planning_frac = C / (C + other)."""
    rows = []
    for step in sorted({v["step"] for v in verdicts}):
        letters = Counter(v["verdict"] for v in verdicts if v["step"] == step)
        planning, other = letters[PLANNING], sum(letters[c] for c in CATEGORIES if c != PLANNING)
        rows.append(dict(step=step, failed=sum(letters.values()), **{c: letters[c] for c in CATEGORIES},
                         planning=planning, other=other, unparsed=letters[None],
                         planning_frac=planning / (planning + other) if planning + other else float("nan")))
    return rows


def plot_counts(counts: list[dict], out: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("error_types: matplotlib is not installed (pip install matplotlib); no figure written")
        return None
    steps = [c["step"] for c in counts]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("planning", "planning & strategy (C)"), ("other", "other (A, B, D)"),
                       ("unparsed", "unparsed verdicts")):
        ax.plot(steps, [c[key] for c in counts], marker=".", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("failed rollouts")
    ax.set_title("error types of failed rollouts (HICRA Fig. 5)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def run(run_dir: str, cfg: JudgeConfig) -> dict:
    path = os.path.join(run_dir, "rollouts.jsonl")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not found (is {run_dir} a run folder? train.py writes rollouts.jsonl)")
    failed = read_failed(path, cfg.limit_per_step)
    if not failed:
        raise ValueError(f"{path}: no failed rollouts to judge")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    model, tokenizer = load_model(cfg.judge, device=device,
                                  dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    if tokenizer is None:
        raise ValueError(f"{cfg.judge}: no tokenizer files in the judge's folder")
    verdicts = judge(failed, model, tokenizer, cfg)
    with open(os.path.join(run_dir, "error_types.jsonl"), "w") as f:
        f.writelines(json.dumps(v, ensure_ascii=False) + "\n" for v in verdicts)
    counts = count_by_step(verdicts)
    summary = {"config": dataclasses.asdict(cfg), "steps": counts}
    with open(os.path.join(run_dir, "error_types.json"), "w") as f:
        json.dump(summary, f, indent=2)
    summary["figure"] = plot_counts(counts, os.path.join(run_dir, "error_types.png"))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a run folder holding rollouts.jsonl")
    add_dataclass_args(parser, JudgeConfig)
    args = parser.parse_args(argv)
    try:
        summary = run(args.run_dir, dataclass_from_args(JudgeConfig, args))
    except ValueError as e:
        sys.exit(f"error: {e}")
    for c in summary["steps"]:
        frac = "nan" if math.isnan(c["planning_frac"]) else f"{c['planning_frac']:.2f}"
        print(f"step {c['step']}: {c['failed']} failed, planning {c['planning']}, other {c['other']}, "
              f"unparsed {c['unparsed']}, planning fraction {frac}")
    print(f"verdicts: {os.path.join(args.run_dir, 'error_types.jsonl')}\ncounts:   "
          f"{os.path.join(args.run_dir, 'error_types.json')}\nfigure:   {summary['figure']}")


if __name__ == "__main__":
    main()
