"""PPO-clip policy loss with asymmetric clipping, and truncated importance sampling (TIS).

Per valid token, with ratio = pi_theta / pi_old = exp(logprobs - old_logprobs) and A the advantage:

    loss_t = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))     (PPO, Schulman 2017)

clip_high > clip_low is DAPO's clip-higher (Yu et al. 2025): it lets the probability of
unlikely tokens with positive advantage grow further, against entropy collapse.

TIS corrects the mismatch between the rollout engine (vLLM: other kernels, other precision)
and the learner: the samples come from pi_rollout, the loss assumes pi_old. Each token's loss
is multiplied by the detached weight min(pi_old / pi_rollout, tis_cap), the importance ratio
truncated from above to bound its variance (Yao et al. 2025, "Your efficient RL framework
secretly brings you off-policy RL training").

Inputs are float32 logprobs [B, T] of the sampled tokens; old_logprobs, rollout_logprobs and
advantages are treated as constants. Log-ratios are clamped to +-20 before exp, and padded
positions are zeroed before any arithmetic, so garbage (even NaN / inf) at padding reaches
neither the loss nor the gradient.
"""
from __future__ import annotations

import math

import torch

from .aggregation import aggregate, as_bool_mask, masked_mean
from .off_policy import LOG_RATIO_LIMIT, importance_weights, log_ratios, mismatch_stats



def _masked_log_ratio(numerator: torch.Tensor, denominator: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """numerator - denominator on valid tokens, 0 at padding, clamped to +-LOG_RATIO_LIMIT.

    Padding is zeroed on the raw difference: the backward of a subtraction never multiplies
    by the (possibly NaN) values themselves, so padding gets an exact 0 gradient.
    """
    diff = torch.where(mask, numerator.float() - denominator.float(), 0.0)
    return diff.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)


def _masked_max_nonneg(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max of x >= 0 over valid positions; 0 when there are none (no host sync)."""
    return torch.where(mask, x, 0.0).amax() if x.numel() else x.new_zeros(())


def tis_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor,
                tis_cap: float) -> torch.Tensor:
    """Truncated importance weights [B, T]: min(exp(old - rollout), tis_cap), detached, 1 at padding."""
    return importance_weights(old_logprobs, rollout_logprobs, mask, "tis", tis_cap)[0]


def _check_inputs(mask, clip_low, clip_high, tis_cap, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.shape != mask.shape:
            raise ValueError(f"{name} must have the mask's shape {tuple(mask.shape)}, got {tuple(t.shape)}")
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if tis_cap is not None and tensors["rollout_logprobs"] is None:
        raise ValueError("tis_cap is set but no rollout_logprobs were given to correct against")


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.28,
                aggregation: str = "token", max_len: int | None = None,
                rollout_logprobs: torch.Tensor | None = None, tis_cap: float | None = None,
                denominator: torch.Tensor | float | None = None,
                is_correction: str = "tis") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip loss (scalar float32, to minimise) and detached 0-dim stats.

    logprobs [B, T] carry the gradient; old_logprobs [B, T] are the learner's logprobs of the
    same tokens before this update (pass logprobs.detach() for a single on-policy step);
    advantages [B, T]; mask [B, T]. aggregation / max_len / denominator: see aggregation.py
    (with micro-batches, pass the optimizer step's loss_denominator).
    rollout_logprobs [B, T] from the rollout engine plus tis_cap turn the off-policy correction on:
    `is_correction` (off_policy.IS_CORRECTIONS; TIS by default) with the bound C = tis_cap.

    stats: pg_loss; clip_frac_low / clip_frac_high (share of valid tokens whose gradient the
    clip removed: ratio < 1 - clip_low with A < 0, ratio > 1 + clip_high with A > 0) and
    clip_frac; approx_kl (k3 estimate of KL(pi_old || pi_theta)); ratio_mean, ratio_max;
    with rollout_logprobs also rollout_kl (k3 estimate of KL(pi_rollout || pi_old), the
    engine/learner mismatch), rollout_probs_diff_mean / _max and, with tis_cap, tis_weight_mean,
    tis_capped_frac (share of tokens whose ratio exceeds C) and is_masked_frac (tokens a masked
    correction dropped).
    """
    mask = as_bool_mask(mask)
    _check_inputs(mask, clip_low, clip_high, tis_cap, logprobs=logprobs,
                  old_logprobs=old_logprobs, advantages=advantages, rollout_logprobs=rollout_logprobs)
    log_ratio = _masked_log_ratio(logprobs, old_logprobs.detach(), mask)          # [B, T]
    ratio = log_ratio.exp()                                                        # 1 at padding
    adv = torch.where(mask, advantages.detach().float(), 0.0)                      # [B, T]
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(-adv * ratio, -adv * clipped)                        # [B, T]
    weights = None
    if tis_cap is not None:
        weights, kept = importance_weights(old_logprobs, rollout_logprobs, mask, is_correction, tis_cap)  # [B, T]
        per_token = per_token * weights
    loss = aggregate(per_token, mask, aggregation, max_len, denominator)

    with torch.no_grad():
        low = (ratio < 1.0 - clip_low) & (adv < 0)
        high = (ratio > 1.0 + clip_high) & (adv > 0)
        stats = {
            "pg_loss": loss.detach(),
            "clip_frac_low": masked_mean(low.float(), mask),
            "clip_frac_high": masked_mean(high.float(), mask),
            "clip_frac": masked_mean((low | high).float(), mask),
            "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": _masked_max_nonneg(ratio, mask),
        }
        if rollout_logprobs is not None:
            stats.update(mismatch_stats(old_logprobs, rollout_logprobs, mask))
        if weights is not None:
            above_cap = log_ratios(old_logprobs, rollout_logprobs, mask) > math.log(tis_cap)
            stats["tis_weight_mean"] = masked_mean(weights, mask)
            stats["tis_capped_frac"] = masked_mean(above_cap.float(), mask)
            stats["is_masked_frac"] = masked_mean((mask & ~kept).float(), mask)
    return loss, {k: v.detach().float() for k, v in stats.items()}
