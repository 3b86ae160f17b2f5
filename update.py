"""The PPO update of one training step: mu epochs of a clipped token-level policy-gradient loss over packed
micro-batches, one AdamW step per epoch (train.py calls `ppo_update` once per step).

    for epoch in 1..mu:  for micro-batch b:  loss_b = policy_loss(logp_b, old_b, A'_b, mask_b) (loss.py),
                                             normalised by the STEP's global token / sequence counts
                         backward(loss_b * world)        (FSDP averages gradients over ranks; this undoes it)
                         clip the global grad norm;  AdamW step unless the norm is non-finite
So the summed gradients of all micro-batches on all ranks equal those of one big batch in one process.
Packing (`pack`): a group's prompt is laid out once with its G responses after it, each response seeing the
prompt and its own past only (its keys gathered as [prompt; itself]), so the prompt is paid for once, not G times.
A'_{i,t} = A_i + alpha |A_i| on the tokens HICRA amplifies (planning tokens by default; loss.hicra_advantages).
"""
from dataclasses import dataclass

import torch

import model as M
from distributed import all_sum, max_over_ranks
from loss import amplify_mask, hicra_advantages, policy_loss, token_advantages


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
    old_logprobs: list  # per row: (len(response),) sampler (or recomputed) logprobs
    seq_advantages: torch.Tensor  # (B,) group-relative advantages
    planning: torch.Tensor  # (B, T_max) bool planning-token mask over response tokens


def ppo_update(policy, optimizer, batch: Batch, cfg, loss_cfg, ppo_epochs, lr, world, is_dist, device, reference=None):
    """mu epochs, one optimizer step each, over packed micro-batches; the loss of every micro-batch is
    normalised by the whole step's token / sequence counts, so their summed gradients equal one big batch's.

    Returns dict(loss (epoch-0 total), loss_stats, token_stats, grad_norm, skipped).
    """
    seqs = batch.seqs
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
    out = dict(loss=0.0, loss_stats=[], token_stats=[], grad_norm=float("nan"), skipped=0)
    policy.train()
    for epoch in range(ppo_epochs):
        for rows in batches:
            if not rows:  # an empty slot under FSDP: a zero-weight pass keeps the collectives in step
                (policy_logprobs(policy, [([0], [[0]])], cfg.temperature, device)[0].sum() * 0.0).backward()
                continue
            mb = [(seqs[unit[0]][0], [seqs[i][1] for i in unit]) for unit in rows]
            rows = [i for unit in rows for i in unit]
            logp, ent, mask = policy_logprobs(policy, mb, cfg.temperature, device)  # (b, T) each
            T = mask.shape[1]
            old = pad_rows(torch.cat([batch.old_logprobs[i] for i in rows]).to(device), [len(seqs[i][1]) for i in rows], T)[0]
            if cfg.recompute_old_logprobs and epoch == 0:
                for j, i in enumerate(rows):
                    batch.old_logprobs[i] = logp[j, :len(seqs[i][1])].detach().cpu()
            old_for_loss = logp.detach() if cfg.recompute_old_logprobs and epoch == 0 else old
            plan = batch.planning[rows, :T].to(device)  # (b, T)
            adv = token_advantages(batch.seq_advantages[rows].to(device), mask)  # (b, T)
            if cfg.hicra_alpha:
                amplify = amplify_mask(plan, ent.detach(), mask, cfg.hicra_tokens, cfg.hicra_top_q)
                adv = hicra_advantages(adv, amplify, cfg.hicra_alpha)
            ref = None
            if reference is not None:
                with torch.no_grad():
                    ref = policy_logprobs(reference, mb, cfg.temperature, device)[0]
            loss, stats = policy_loss(logp, old_for_loss, adv, mask, loss_cfg, total_tokens=max(total_tokens, 1),
                                      total_seqs=max(total_seqs, 1), ref_logprobs=ref, entropy=ent, planning_mask=plan)
            # the loss is already normalised by global counts: undo FSDP's mean over ranks
            (loss * world).backward()
            if epoch == 0:
                out["loss"] = out["loss"] + loss.detach()
                out["loss_stats"].append(stats)
                valid = mask.bool()
                out["token_stats"].append((ent.detach()[valid], logp.detach()[valid], plan[valid], (logp.detach() - old)[valid],
                                           adv.detach()[valid]))
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


def policy_logprobs(policy, segments, temperature, device):
    """-> (logprobs, entropy, mask), each (B, T_resp), for the responses of [(prompt, [responses])] in order."""
    ids, positions, meta, rows, targets = pack(segments, device)
    logp, ent = policy(ids, positions, meta, targets=targets, logits_index=rows, temperature=temperature)
    lengths = [len(r) for _, responses in segments for r in responses]
    T = max(lengths)
    logp, mask = pad_rows(logp, lengths, T)
    return logp, pad_rows(ent, lengths, T)[0], mask
