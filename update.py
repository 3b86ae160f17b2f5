"""The PPO update of one training step: mu epochs of a clipped token-level policy-gradient loss over packed
micro-batches, one AdamW step per epoch (train.py calls `ppo_update` once per step).

    [pre-pass, no grad, at theta_old: old_b = the trainer's logprobs (recompute), H_b = token entropies (80/20)]
    tau = high_entropy_threshold(H of every micro-batch on every rank, q)     (80/20 only; pg_variants.py)
    for epoch in 1..mu:  for micro-batch b:  loss_b = policy_loss(logp_b, old_b, A'_b, mask_b, sampler_b, tau)
                                             (loss.py), normalised by the STEP's global token / sequence counts
                         backward(loss_b * world)        (FSDP averages gradients over ranks; this undoes it)
                         clip the global grad norm;  AdamW step unless the norm is non-finite
So the summed gradients of all micro-batches on all ranks equal those of one big batch in one process.
Packing (`pack`): a group's prompt is laid out once with its G responses after it, each response seeing the
prompt and its own past only (its keys gathered as [prompt; itself]), so the prompt is paid for once, not G times.
A'_{i,t} = A_i + alpha |A_i| on the tokens HICRA amplifies (planning tokens by default; loss.hicra_advantages).

Old logprobs: the sampler's (Batch.old_logprobs) or, with recompute_old_logprobs, the trainer's from the pre-pass,
which replace them; Batch.sampler_logprobs keeps the sampler's either way. The pre-pass runs (over the same
micro-batches, FSDP's empty slots included) only with recompute or top_entropy_q < 1: the 80/20 threshold is a
quantile over the whole step on all ranks, so it must exist before the first micro-batch's gradient (computing old
logprobs inside epoch 0's forward, as this file did before, cannot give it). With neither option nothing changes:
no extra forward, the same loss and gradients bit for bit.
Mismatch metrics (pg_variants.mismatch_weights: |old - sampler|, sequence-ratio range, masked fraction) are logged every
step: by policy_loss from the recomputed old logprobs, or, without recompute (where old IS the sampler's, so a
correction is refused), from epoch 0's forward, which runs at theta_old. Clip-Cov draws from one seeded generator
per step, used by the micro-batches in a fixed order, so a rerun or a resume chooses the same tokens.
Stopping (should_stop, e.g. a SIGTERM flag): asked before the pre-pass and before each micro-batch of the first
epoch, i.e. before any optimizer step; the ranks agree by one all-reduce MAX per check, and when any rank says stop
every rank drops its gradients and raises rollout.Interrupted with the weights and optimizer state untouched, so the
caller can abandon the step. After the first optimizer step the update runs to its end.
"""
from dataclasses import dataclass

import torch

import model as M
from distributed import all_gather_1d, all_sum, max_over_ranks
from loss import amplify_mask, hicra_advantages, policy_loss, token_advantages
from pg_variants import high_entropy_threshold, mismatch_weights
from rollout import Interrupted


def pack(segments, device):
    """Micro-batch -> flat inputs, positions, AttnMeta, the rows that predict response tokens, and targets.

    segments: [(prompt ids, [response ids, ...])]. A segment is laid out once as prompt + r_1[:-1] + r_2[:-1]
    + ...; response j's tokens take positions len(prompt).. and attend to [prompt; their own past] only: the
    attention sequences are the prompt (causal) and each response, whose keys are gathered as [prompt rows;
    its own rows] (AttnMeta.kv_index, bottom-right causal), so G responses pay for their prompt once and the
    FlashAttention kernels take it as plain varlen attention. The row predicting r_j[0] is the prompt's last
    token, shared by all j. Without any multi-response segment this is plain causal packing (no gather).
    """
    ids, positions, rows, targets, q_lengths, k_lengths, kv_index, offset = [], [], [], [], [], [], [], 0
    for prompt, responses in segments:
        prompt_rows = list(range(offset, offset + len(prompt)))
        seg_ids, seg_pos = list(prompt), list(range(len(prompt)))
        q_lengths.append(len(prompt))
        k_lengths.append(len(prompt))
        kv_index += prompt_rows
        for response in responses:
            start, n = offset + len(seg_ids), len(response) - 1  # the response's query rows
            rows += [offset + len(prompt) - 1] + list(range(start, start + n))
            seg_ids += response[:-1]
            seg_pos += range(len(prompt), len(prompt) + n)
            targets += response
            if n:
                q_lengths.append(n)
                k_lengths.append(len(prompt) + n)
                kv_index += prompt_rows + list(range(start, start + n))
        ids += seg_ids
        positions += seg_pos
        offset += len(seg_ids)
    as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=device)
    if all(len(responses) == 1 for _, responses in segments):  # one sequence per segment: plain packing
        meta = M.AttnMeta.packed([len(p) + len(r[0]) - 1 for p, r in segments], device)
    else:
        meta = M.AttnMeta.packed_gather(q_lengths, k_lengths, as_tensor(kv_index), device)
    return as_tensor(ids), as_tensor(positions), meta, as_tensor(rows), as_tensor(targets)


def pad_rows(flat, lengths, T):
    """(sum(lengths),) -> (B, T) right-padded with zeros."""
    out = flat.new_zeros(len(lengths), T)
    mask = torch.arange(T, device=flat.device)[None, :] < torch.tensor(lengths, device=flat.device)[:, None]
    return out.masked_scatter(mask, flat), mask


def micro_batches(units, lengths, max_tokens):
    """Split `units` in order into lists whose total length stays under max_tokens (>= one unit each)."""
    batches, current, used = [], [], 0
    for i, n in zip(units, lengths):
        if current and used + n > max_tokens:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    return batches + [current] if current else batches


@dataclass
class Batch:
    """One step's training data on this rank, rows in group order (G consecutive rows per prompt)."""
    seqs: list  # (prompt ids, response ids) per row
    old_logprobs: list  # per row: (len(response),) theta_old logprobs: the sampler's, or the trainer's under recompute
    seq_advantages: torch.Tensor  # (B,) group-relative advantages
    planning: torch.Tensor  # (B, T_max) bool planning-token mask over response tokens
    sampler_logprobs: list | None = None  # per row: (len(response),) the sampler's logprobs, never overwritten

    def __post_init__(self):
        if self.sampler_logprobs is None:  # a copy of the list: recompute replaces old_logprobs' entries, not these
            self.sampler_logprobs = list(self.old_logprobs)


def ppo_update(policy, optimizer, batch: Batch, cfg, loss_cfg, ppo_epochs, lr, world, is_dist, device, reference=None,
               seed: int | None = None, should_stop=None):
    """mu epochs, one optimizer step each, over packed micro-batches; the loss of every micro-batch is
    normalised by the whole step's token / sequence counts, so their summed gradients equal one big batch's.

    seed: Clip-Cov's random choice of tokens draws from one torch.Generator(device).manual_seed(seed) made here, once
    per step (train.py derives seed from the run seed, the step and the rank) and used by the micro-batches in a fixed
    order, so reruns and resumes reproduce; required when loss_cfg.cov_mode is 'clip', unused otherwise.
    should_stop (optional, () -> bool, the same on every rank): polled before the pre-pass and each micro-batch of
    epoch 0; when it is True on any rank, raises rollout.Interrupted on every rank before any optimizer step.
    Returns dict(loss (epoch-0 total), loss_stats, token_stats, grad_norm, skipped, entropy_threshold (80/20, or None)).
    """
    if loss_cfg.mismatch_correction != "none" and not cfg.recompute_old_logprobs:
        raise ValueError(f"mismatch_correction={loss_cfg.mismatch_correction!r} needs recompute_old_logprobs "
                         "(--recompute-old-logprobs): without it the old logprobs are the sampler's, so pi_old / "
                         "pi_sampler = 1 and nothing is corrected; use mismatch_correction 'none' or turn recompute on")
    if loss_cfg.cov_mode == "clip" and seed is None:
        raise ValueError("ppo_update needs seed= (a per-step seed for Clip-Cov's generator) when cov_mode is 'clip'")
    seqs = batch.seqs
    batches, total_tokens, total_seqs = plan_micro_batches(seqs, cfg, is_dist)
    out = dict(loss=0.0, loss_stats=[], token_stats=[], grad_norm=float("nan"), skipped=0, entropy_threshold=None)
    policy.train()
    threshold = None
    if cfg.recompute_old_logprobs or loss_cfg.top_entropy_q < 1:
        stop_if_asked(should_stop, policy, optimizer, is_dist)
        entropies = prepass(policy, batch, batches, cfg, device)  # (this rank's valid tokens,)
        if loss_cfg.top_entropy_q < 1:
            threshold = high_entropy_threshold(all_gather_1d(entropies, is_dist), loss_cfg.top_entropy_q)  # ()
            out["entropy_threshold"] = float(threshold)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    totals = dict(total_tokens=max(total_tokens, 1), total_seqs=max(total_seqs, 1))
    for epoch in range(ppo_epochs):
        for rows in batches:
            if epoch == 0:
                stop_if_asked(should_stop, policy, optimizer, is_dist)
            if not rows:  # an empty slot under FSDP: a zero-weight pass keeps the collectives in step
                (policy_logprobs(policy, [([0], [[0]])], cfg.temperature, device)[0].sum() * 0.0).backward()
                continue
            loss, stats, token_stats = micro_batch_loss(policy, batch, rows, cfg, loss_cfg, device, reference, totals,
                                                        threshold, generator, log=epoch == 0)
            # the loss is already normalised by global counts: undo FSDP's mean over ranks
            (loss * world).backward()
            if epoch == 0:
                out["loss"] = out["loss"] + loss.detach()
                out["loss_stats"].append(stats)
                out["token_stats"].append(token_stats)
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        out["grad_norm"] = float(grad_norm)
        if torch.isfinite(grad_norm):  # a non-finite loss or gradient skips the update
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
        else:
            out["skipped"] += 1
        optimizer.zero_grad(set_to_none=True)
    policy.eval()
    return out


def stop_if_asked(should_stop, policy, optimizer, is_dist):
    """Raise Interrupted on every rank when should_stop() is True on any (one all-reduce MAX under torchrun); before
    the first optimizer step, so dropping the gradients leaves the weights and optimizer state as they were."""
    if should_stop is None:
        return
    stop = int(bool(should_stop()))
    if (max_over_ranks(stop) if is_dist else stop):
        optimizer.zero_grad(set_to_none=True)
        policy.eval()
        raise Interrupted("ppo_update: stopped on request before the first optimizer step (nothing was applied)")


def plan_micro_batches(seqs, cfg, is_dist):
    """-> (micro-batches: lists of units (row lists; with share_prompt the rows of one prompt), the step's global
    response-token and response counts). Under FSDP every rank gets as many micro-batches (empty ones appended)."""
    train_rows = [i for i, (_, response) in enumerate(seqs) if response]  # empty responses have no tokens
    total_tokens, total_seqs = all_sum([sum(len(seqs[i][1]) for i in train_rows), len(train_rows)], is_dist)
    units = []  # rows computed together: with share_prompt, the rows of one prompt (consecutive in a group)
    for i in train_rows:
        if cfg.share_prompt and units and seqs[units[-1][-1]][0] is seqs[i][0]:
            units[-1].append(i)
        else:
            units.append([i])
    sizes = [len(seqs[u[0]][0]) + sum(len(seqs[i][1]) for i in u) for u in units]
    batches = micro_batches(units, sizes, cfg.micro_batch_tokens)
    if is_dist:  # every rank must run as many forward/backward passes (FSDP collectives)
        batches += [[]] * (max_over_ranks(len(batches)) - len(batches))
    return batches, total_tokens, total_seqs


@torch.no_grad()
def prepass(policy, batch: Batch, batches, cfg, device):
    """No-grad forward over the step's micro-batches (FSDP's empty slots too, so the ranks stay in step) at theta_old
    -> (this rank's valid response tokens,) entropies. Under cfg.recompute_old_logprobs, batch.old_logprobs[i] <- the
    trainer's logprobs (the sampler's stay in batch.sampler_logprobs)."""
    entropies = [torch.zeros(0, device=device)]
    for rows in batches:
        if not rows:
            policy_logprobs(policy, [([0], [[0]])], cfg.temperature, device)
            continue
        segments, rows = _segments(batch.seqs, rows)
        logp, ent, mask = policy_logprobs(policy, segments, cfg.temperature, device)  # (b, T) each
        if cfg.recompute_old_logprobs:
            for j, i in enumerate(rows):
                batch.old_logprobs[i] = logp[j, :len(batch.seqs[i][1])].cpu()
        entropies.append(ent[mask.bool()])
    return torch.cat(entropies)


def micro_batch_loss(policy, batch: Batch, units, cfg, loss_cfg, device, reference, totals, threshold, generator, log):
    """One micro-batch's forward and step-normalised loss -> (loss, loss metrics, token_stats: flat valid-token
    (entropy, logprob, planning, logprob - sampler logprob, advantage)). log (epoch 0, theta = theta_old): add the
    sampler/trainer mismatch metrics from this forward when policy_loss does not (without recompute old IS the
    sampler's, so its own would read 0)."""
    segments, rows = _segments(batch.seqs, units)
    logp, ent, mask = policy_logprobs(policy, segments, cfg.temperature, device)  # (b, T) each
    T, lengths = mask.shape[1], [len(batch.seqs[i][1]) for i in rows]
    old = pad_rows(torch.cat([batch.old_logprobs[i] for i in rows]).to(device), lengths, T)[0]  # (b, T)
    sampler = pad_rows(torch.cat([batch.sampler_logprobs[i] for i in rows]).to(device), lengths, T)[0]  # (b, T)
    plan = batch.planning[rows, :T].to(device)  # (b, T)
    adv = token_advantages(batch.seq_advantages[rows].to(device), mask)  # (b, T)
    if cfg.hicra_alpha:
        amplify = amplify_mask(plan, ent.detach(), mask, cfg.hicra_tokens, cfg.hicra_top_q)
        adv = hicra_advantages(adv, amplify, cfg.hicra_alpha)
    ref = None
    if reference is not None:
        with torch.no_grad():
            ref = policy_logprobs(reference, segments, cfg.temperature, device)[0]
    recomputed = cfg.recompute_old_logprobs
    loss, stats = policy_loss(logp, old, adv, mask, loss_cfg, **totals, ref_logprobs=ref, entropy=ent,
                              planning_mask=plan, sampler_logprobs=sampler if recomputed else None,
                              entropy_threshold=threshold, generator=generator)
    if not log:
        return loss, stats, None
    if not recomputed:
        stats.update(mismatch_weights(logp.detach(), sampler, mask, loss_cfg)[1])
    valid, logp = mask.bool(), logp.detach()
    return loss, stats, (ent.detach()[valid], logp[valid], plan[valid], (logp - sampler)[valid], adv.detach()[valid])


def _segments(seqs, units):
    """Units (row lists sharing a prompt) -> ([(prompt, [responses])] for policy_logprobs, the flat rows in order)."""
    return [(seqs[unit[0]][0], [seqs[i][1] for i in unit]) for unit in units], [i for unit in units for i in unit]


def policy_logprobs(policy, segments, temperature, device):
    """-> (logprobs, entropy, mask), each (B, T_resp), for the responses of [(prompt, [responses])] in order."""
    ids, positions, meta, rows, targets = pack(segments, device)
    logp, ent = policy(ids, positions, meta, targets=targets, logits_index=rows, temperature=temperature)
    lengths = [len(r) for _, responses in segments for r in responses]
    T = max(lengths)
    logp, mask = pad_rows(logp, lengths, T)
    return logp, pad_rows(ent, lengths, T)[0], mask
