"""rl.algorithms: the policy-gradient math as pure torch functions (docs/algorithms.md).

Padded [B, T] response tensors with a mask [B, T]; float32 results; padding and empty
responses never produce NaN; deterministic on CPU and CUDA.
"""
from .advantages import (ESTIMATORS, compute_advantages, discounted_returns, drgrpo_advantages,
                         grpo_advantages, reinforce_pp_advantages, rloo_advantages, whiten)
from .aggregation import AGGREGATIONS, aggregate, aggregation_numerator, loss_denominator, masked_mean, masked_sum
from .entropy import entropy_bonus, entropy_from_logits, entropy_of
from .kl import KL_ESTIMATORS, kl_loss, kl_penalty
from .losses import policy_loss, tis_weights
from .off_policy import IS_CORRECTIONS, importance_weights, mismatch_stats
from .sampling import dynamic_sampling_filter, groups_needed
from .shaping import overlong_shaping

__all__ = [
    "ESTIMATORS", "compute_advantages", "grpo_advantages", "drgrpo_advantages", "rloo_advantages",
    "reinforce_pp_advantages", "discounted_returns", "whiten",
    "AGGREGATIONS", "aggregate", "aggregation_numerator", "loss_denominator", "masked_mean", "masked_sum",
    "policy_loss", "tis_weights", "IS_CORRECTIONS", "importance_weights", "mismatch_stats", "KL_ESTIMATORS", "kl_penalty", "kl_loss",
    "entropy_from_logits", "entropy_of", "entropy_bonus", "dynamic_sampling_filter", "groups_needed",
    "overlong_shaping",
]
