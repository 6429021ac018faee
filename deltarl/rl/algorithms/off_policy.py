"""Off-policy correction: weights that turn samples from the behaviour policy (the rollout engine's,
possibly several weight versions old) into an estimate under the proximal policy (the learner's at the
start of the update), the pair of decoupled PPO (Hilton et al. 2022; AReaL's asynchronous RL).

With r = pi_proximal / pi_behaviour per token:

    tis            min(r, C)                     truncated IS (Yao et al. 2025): bounded variance, biased down
    mask_token     r * [1/C <= r <= C]           masked IS: tokens whose ratio leaves the band get weight 0
    mask_sequence  r * [1/C <= g <= C]           the same test on the sequence's geometric-mean ratio g,
                                                 so a sequence is kept or dropped whole
    none           1

All weights are detached and 1 at padding (0 where masked). The PPO clip then acts on pi_theta / pi_proximal.
"""
from __future__ import annotations

import torch

from .aggregation import as_bool_mask

IS_CORRECTIONS = ("tis", "mask_token", "mask_sequence", "none")
LOG_RATIO_LIMIT = 20.0   # exp(20) ~ 5e8: finite in float32, far beyond any clip range


def log_ratios(proximal: torch.Tensor, behaviour: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log(pi_proximal / pi_behaviour) [B, T] on valid tokens, 0 at padding, clamped to +-20."""
    diff = torch.where(mask, proximal.detach().float() - behaviour.detach().float(), 0.0)
    return diff.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)


def importance_weights(proximal: torch.Tensor, behaviour: torch.Tensor, mask: torch.Tensor, mode: str,
                       cap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [B, T], kept [B, T] bool) of the correction `mode` (IS_CORRECTIONS) with bound `cap` = C.
    `kept` is False on valid tokens a masked mode dropped (and at padding)."""
    if mode not in IS_CORRECTIONS:
        raise ValueError(f"unknown IS correction {mode!r}; allowed: {list(IS_CORRECTIONS)}")
    mask = as_bool_mask(mask)
    if mode == "none" or cap is None:
        return torch.ones_like(mask, dtype=torch.float32), mask
    if cap <= 0 or (cap < 1 and mode != "tis"):
        raise ValueError(f"tis_cap (the importance-ratio bound C) must be > 0, and >= 1 for {mode!r}: got {cap}")
    log_r = log_ratios(proximal, behaviour, mask)                                    # [B, T]
    ratio = log_r.exp()
    if mode == "tis":
        return ratio.clamp(max=cap), mask
    bound = torch.log(torch.tensor(float(cap)))
    if mode == "mask_token":
        inside = log_r.abs() <= bound                                                # [B, T]
    else:
        lengths = mask.sum(1).clamp(min=1)
        geometric = log_r.sum(1) / lengths                                           # [B] mean log-ratio
        inside = (geometric.abs() <= bound)[:, None].expand_as(mask)                 # [B, T]
    kept = inside & mask
    return torch.where(kept, ratio, torch.where(mask, 0.0, 1.0)), kept


def mismatch_stats(proximal: torch.Tensor, behaviour: torch.Tensor, mask: torch.Tensor) -> dict:
    """How far the rollout's token probabilities are from the learner's: |p_proximal - p_behaviour|
    mean and max over valid tokens (verl's rollout_probs_diff) and the k3 estimate of KL(behaviour || proximal)."""
    mask = as_bool_mask(mask)
    count = mask.sum().clamp(min=1)
    diff = torch.where(mask, (proximal.float().exp() - behaviour.float().exp()).abs(), 0.0)
    log_r = log_ratios(proximal, behaviour, mask)
    k3 = torch.where(mask, log_r.exp() - 1.0 - log_r, 0.0)
    return {"rollout_probs_diff_mean": diff.sum() / count,
            "rollout_probs_diff_max": diff.amax() if diff.numel() else diff.new_zeros(()),
            "rollout_kl": k3.sum() / count}
