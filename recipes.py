"""Training recipes: the algorithm presets, the papers' recipes with their deviations, the hardware presets and
the evaluation protocol.

A recipe is a dict of TrainConfig fields (train.py) that fills every field left unset on the command line;
the command line always wins. train.py resolves a run as  command line > TASK_PRESETS (the preset's values for a
built-in task) > ALGORITHMS[--algo] > PRESETS[--preset].
A field a recipe sets takes effect only where TrainConfig's default for it is None ("unset").

Algorithms (the same loss, loss.py; clip bounds left out come from the curriculum level, 0.2 / 0.28):
  grpo    A_i = (r_i - mean) / std, clip 0.2 / 0.2, seq-mean-token-mean, no dynamic sampling, no length penalty.
  dapo    clip-higher (the level's 0.2 / 0.28), token-mean, dynamic sampling, soft overlong penalty.
  hicra   dapo + A' = A + alpha |A| on planning tokens, alpha = 0.2.
The papers' recipes (each with its deviations from its paper, in NOTES and printed by `python recipes.py`):
  grpo-clip-higher   HICRA's baseline: GRPO with clip-higher.
  hicra-paper        HICRA as its paper runs it: grpo-clip-higher + alpha = 0.2, context rule 2x at 20% truncation.
  hicra-llama        hicra-paper + dynamic sampling (the paper uses it for Llama-3.1 only).
  entropy-reg        the entropy-regularisation baseline: grpo-clip-higher + an entropy bonus on all tokens.
  hgrpo              HGRPO's GRPO+ (DAPO) at temperature 0.6, G = 16, no system prompt, per-level length reward;
                     the level hierarchy is --curriculum hgrpo1 | hgrpo2 | adaptive.
Evaluation protocol (EVAL_PROTOCOL, eval.py's defaults): k = 32 samples on AIME24/25, 4 on AMC23 (HICRA), 16
elsewhere; temperature 0.6, top-p 1.0.

    python recipes.py              # every recipe with its values and notes
    python recipes.py hicra-paper  # one of them
"""
import re
import sys

ALGORITHMS = {
    "grpo": dict(agg="seq-mean-token-mean", eps_low=0.2, eps_high=0.2, dynamic_sampling=False, overlong_buffer=0,
                 hicra_alpha=0.0),
    "dapo": dict(agg="token-mean", dynamic_sampling=True, overlong_buffer=-1, hicra_alpha=0.0),  # clip: the level's
    "hicra": dict(agg="token-mean", dynamic_sampling=True, overlong_buffer=-1, hicra_alpha=0.2),
}
GRPO_CLIP_HIGHER = dict(agg="token-mean", eps_low=0.2, eps_high=0.28, adv_scale="none", dynamic_sampling=False,
                        overlong_buffer=0, hicra_alpha=0.0, entropy_coef=0.0)
HICRA_PAPER = {**GRPO_CLIP_HIGHER, "hicra_alpha": 0.2, "context_factor": 2.0, "context_cap": 32768,
               "context_threshold": 0.2}
ALGORITHMS.update({
    "grpo-clip-higher": GRPO_CLIP_HIGHER,
    "hicra-paper": HICRA_PAPER,
    "hicra-llama": {**HICRA_PAPER, "dynamic_sampling": True},
    "entropy-reg": {**GRPO_CLIP_HIGHER, "entropy_coef": 0.001},
    "hgrpo": dict(agg="token-mean", adv_scale="group", dynamic_sampling=True, overlong_buffer=-1, hicra_alpha=0.0,
                  entropy_coef=0.0, temperature=0.6, group_size=16),  # clip: the level's; no system prompt: default
})
NOTES = {  # where a recipe departs from its paper, or where the paper does not say
    "grpo": "Shao et al.'s GRPO without the KL term (add --kl-coef); the std is the unbiased one (n - 1).",
    "dapo": "DAPO's recipe; its token-level loss, clip-higher, dynamic sampling and soft overlong penalty (K = a "
            "quarter of each level's length).",
    "hicra": "dapo + HICRA's credit assignment: the project's default, not the paper's baseline (see hicra-paper).",
    "grpo-clip-higher": "HICRA's baseline. Advantage R - mean(R) with no std, as the paper's equation for A-hat is "
                        "written (adv_scale none); token-mean aggregation and no overlong penalty are our choices "
                        "where the paper names only 'GRPO with clip-higher'; no KL.",
    "hicra-paper": "HICRA (alpha = 0.2) on grpo-clip-higher. Dynamic filtering off (the paper uses it for Llama-3.1 "
                   "only: hicra-llama). The context rule (16K -> 32K once more than 20% of the responses are cut) "
                   "is a factor 2 capped at 32768 tokens of whatever --max-new-tokens is.",
    "hicra-llama": "hicra-paper with dynamic sampling (0 < #correct < G), as the paper's Llama-3.1 runs.",
    "entropy-reg": "grpo-clip-higher + an entropy bonus on every response token; the coefficient 0.001 is our "
                   "choice (the paper's value was not available here).",
    "hgrpo": "GRPO+ = DAPO at rollout temperature 0.6 with G = 16 samples per prompt, no system prompt (the chat "
             "template's own default system turn is removed) and each level's own soft overlong buffer K^l; the "
             "level schedule is --curriculum (hgrpo1, hgrpo2 or adaptive = Algorithm 1). The loss uses the same "
             "temperature as the sampler.",
}
PRESETS = {  # hardware presets: values of fields left unset on the command line
    "cpu": dict(lr=2e-5, group_size=8, prompts_per_step=4, max_new_tokens=32, total_steps=48, data="arith",
                curriculum="adaptive", micro_batch_tokens=4096, save_every=4, eval_every=0, share_prompt=True,
                activation_checkpointing=False),
    "gpu": dict(lr=1e-6, group_size=16, prompts_per_step=32, max_new_tokens=8192, total_steps=1000, data="gsm8k_train",
                curriculum="none", micro_batch_tokens=32768, save_every=50, eval_every=50, share_prompt=False,
                activation_checkpointing=True),  # 32K-token micro-batches: ~107 GB of activations at 1.5B without
}
# A hardware preset's values for one built-in task family (its levels too: words2): the word problems' chain of
# thought needs 64 tokens where the arithmetic answers fit in 32.
TASK_PRESETS = {"cpu": {"words": dict(max_new_tokens=64)}}
EVAL_PROTOCOL = dict(k={"aime24": 32, "aime25": 32, "amc23": 4}, default_k=16, temperature=0.6, top_p=1.0)


def paper_k(benchmark: str) -> int:
    """Samples per problem of the papers' protocol: 32 on AIME24/25, 4 on AMC23, 16 elsewhere."""
    return EVAL_PROTOCOL["k"].get(benchmark, EVAL_PROTOCOL["default_k"])


def task_preset(preset: str, data: str) -> dict:
    """TASK_PRESETS' values for `data` when it names one built-in family or level ("words", "words2"), else {}."""
    return TASK_PRESETS.get(preset, {}).get(re.sub(r"\d+$", "", data), {})


def describe(name: str) -> str:
    if name not in ALGORITHMS:
        raise ValueError(f"recipe '{name}' unknown (recipes: {', '.join(ALGORITHMS)})")
    values = ", ".join(f"{k}={v}" for k, v in ALGORITHMS[name].items())
    return f"{name}: {values}\n    {NOTES[name]}"


def main(argv=None):
    names = (sys.argv[1:] if argv is None else argv) or list(ALGORITHMS)
    try:
        print("\n".join(describe(name) for name in names))
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
