"""KL to a frozen reference policy, from the logprobs of the sampled tokens (Schulman 2020,
"Approximating KL Divergence"). With x ~ pi (the policy that sampled) and
delta = log pi_ref(x) - log pi(x):

    k1 = -delta = log pi - log pi_ref        unbiased, high variance, can be negative
    k2 = delta^2 / 2                         biased, low variance, >= 0
    k3 = exp(delta) - delta - 1              unbiased, low variance, >= 0

Two uses, both off by default (coef 0 in the config):
  - a loss term: loss += coef * kl_loss(...). GRPO (DeepSeekMath) uses k3. As a loss, k1's
    gradient is zero in expectation; k2's gradient is the gradient of KL(pi || pi_ref).
  - a reward penalty: token_rewards = -coef * kl_penalty(old_logprobs, ref_logprobs, "k1", mask)
    passed to compute_advantages("reinforce_pp", ...) (REINFORCE++, PPO-RLHF). It is detached:
    the policy gradient carries it. k1 because its sum over a response is the sequence log ratio,
    whose expectation is exactly the KL: the return optimises E[R] - coef * KL.

estimator=None means each use's default: k1 for kl_penalty (the reward), k3 for kl_loss (the
config's algorithm.kl_estimator: null).
"""
from __future__ import annotations

import torch

from .aggregation import aggregate, as_bool_mask

KL_ESTIMATORS = ("k1", "k2", "k3")
LOG_RATIO_LIMIT = 20.0   # k3 exponentiates: clamp so it stays finite in float32


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str | None = "k1",
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token KL estimate [B, T] float32. With mask, padding is 0 (NaN-safe, 0 gradient).

    ref_logprobs are a constant; logprobs keep their gradient (detach them for a reward).
    """
    estimator = "k1" if estimator is None else estimator
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; allowed: {', '.join(KL_ESTIMATORS)}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"shapes differ: {tuple(logprobs.shape)} vs {tuple(ref_logprobs.shape)}")
    delta = ref_logprobs.detach().float() - logprobs.float()                     # log(ref / pi)
    if mask is not None:
        delta = torch.where(as_bool_mask(mask), delta, 0.0)
    if estimator == "k1":
        return -delta
    if estimator == "k2":
        return 0.5 * delta * delta
    delta = delta.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    return delta.exp() - delta - 1.0


def kl_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
            estimator: str | None = "k3", aggregation: str = "token", max_len: int | None = None) -> torch.Tensor:
    """KL to the reference as a scalar loss term (multiply by the coefficient yourself)."""
    estimator = "k3" if estimator is None else estimator
    return aggregate(kl_penalty(logprobs, ref_logprobs, estimator, mask), mask, aggregation, max_len)
