"""Advantage estimators: one scalar reward per sample in, per-token advantages [B, T] out.

    grpo                   (r - mean_g) / (std_g + eps)                GRPO (DeepSeekMath, Shao et al. 2024)
    drgrpo                 r - mean_g                                  Dr.GRPO (Liu et al. 2025)
    rloo                   r - mean of the other samples of the group  RLOO (Ahmadian et al. 2024)
    reinforce_pp           whiten_batch(discounted return)             REINFORCE++ (Hu 2025)
    reinforce_pp_baseline  as reinforce_pp, with r - mean_g as reward  REINFORCE++-baseline (Hu 2025)

mean_g / std_g are over the samples of one prompt (same group id). The first three are
outcome estimators: one number per sample, broadcast over its response tokens. The two
REINFORCE++ variants work per token: the sequence reward sits on the last response token,
optional per-token rewards (a KL penalty: -coef * kl) are added, and the discounted return of
each token is normalised over all valid tokens of the batch -- call them on the whole rollout
batch, not per learner shard. Advantages are 0 at padding, and rows without response tokens
are all 0 (their reward still counts in their group's statistics).
"""
from __future__ import annotations

import torch

from .aggregation import as_bool_mask, masked_mean, masked_values
from .groups import group_stats

ESTIMATORS = ("grpo", "drgrpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
_OUTCOME = ("grpo", "drgrpo", "rloo")


def grpo_advantages(rewards: torch.Tensor, group_ids, eps: float = 1e-6) -> torch.Tensor:
    """[B] -> [B]: (r - group mean) / (group std + eps); unbiased std, 0 for a group of one."""
    mean, std, _ = group_stats(rewards, group_ids)
    return (rewards.float() - mean) / (std + eps)


def drgrpo_advantages(rewards: torch.Tensor, group_ids) -> torch.Tensor:
    """[B] -> [B]: r - group mean. Dr.GRPO drops the std division, which over-weights prompts
    that are almost always (or almost never) solved."""
    mean, _, _ = group_stats(rewards, group_ids)
    return rewards.float() - mean


def rloo_advantages(rewards: torch.Tensor, group_ids) -> torch.Tensor:
    """[B] -> [B]: r_i - mean_{j != i} r_j over the group (leave-one-out baseline, which keeps
    the estimate unbiased). Equals n/(n-1) * (r - mean); 0 for a group of one sample."""
    mean, _, size = group_stats(rewards, group_ids)
    n = size.float()
    return torch.where(size > 1, (rewards.float() - mean) * n / (n - 1).clamp(min=1), 0.0)


def broadcast_to_tokens(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, T]: each sample's advantage on its valid tokens, 0 at padding."""
    return torch.where(as_bool_mask(mask), advantages.float()[:, None], 0.0)


def _reverse_cumsum(x: torch.Tensor, block: int = 128) -> torch.Tensor:
    """out[:, t] = sum_{j >= t} x[:, j] for x [B, T], accumulated in float64.

    Built from two small matmuls (within blocks of `block` tokens, then across blocks) rather
    than torch.cumsum, whose float version on CUDA is nondeterministic and refused under
    torch.use_deterministic_algorithms(True).
    """
    B, T = x.shape
    num_blocks = -(-T // block)
    xb = torch.nn.functional.pad(x.double(), (0, num_blocks * block - T)).view(B, num_blocks, block)
    ones = torch.ones(block, block, dtype=torch.float64, device=x.device)
    within = xb @ ones.tril()                        # [B, nb, block]: sum over j >= t in the block
    ones_nb = torch.ones(num_blocks, num_blocks, dtype=torch.float64, device=x.device)
    later = xb.sum(-1) @ ones_nb.tril(-1)            # [B, nb]: sum over the blocks after this one
    out = within + later[..., None]
    return out.reshape(B, num_blocks * block)[:, :T]


def discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """[B, T] -> [B, T] float32: G_t = r_t + gamma * G_{t'} with t' the next valid token.

    Padded positions carry no reward and no discount (a hole in the mask, such as a masked
    tool output, is skipped over); returns are 0 there. gamma = 1 (the usual choice for LLMs)
    takes the fast reverse-sum path; other gammas loop over T.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    mask = as_bool_mask(mask)
    rewards = masked_values(token_rewards, mask)                         # [B, T]
    if gamma == 1.0:
        returns = _reverse_cumsum(rewards)
    else:
        returns = torch.zeros_like(rewards, dtype=torch.float64)
        running = torch.zeros(rewards.shape[0], dtype=torch.float64, device=rewards.device)
        for t in reversed(range(rewards.shape[1])):
            running = torch.where(mask[:, t], rewards[:, t] + gamma * running, running)
            returns[:, t] = running
    return torch.where(mask, returns.float(), 0.0)


def _last_token(mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: True at the last valid token of each row (nowhere in an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    if mask.shape[1] == 0:
        return mask
    last = torch.where(mask, positions, -1).amax(-1, keepdim=True)      # [B, 1], -1 if empty
    return positions[None, :] == last                                   # -1 matches nothing


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(x - mean) / (std + eps) over the valid positions of the whole tensor (population std);
    0 at padding."""
    mask = as_bool_mask(mask)
    mean = masked_mean(values, mask)
    var = masked_mean((values.float() - mean) ** 2, mask)
    return torch.where(mask, (values.float() - mean) / (var.sqrt() + eps), 0.0)


def reinforce_pp_advantages(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                            eps: float = 1e-6, token_rewards: torch.Tensor | None = None,
                            group_ids=None) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): global-batch-normalised discounted returns, [B, T].

    Token reward = sequence reward on the last response token + token_rewards (e.g. a KL
    penalty, -coef * kl). With group_ids, the group mean reward is subtracted first
    (REINFORCE++-baseline, the paper's variant for several samples per prompt).
    """
    mask = as_bool_mask(mask)
    rewards = rewards.float()
    if group_ids is not None:
        rewards = drgrpo_advantages(rewards, group_ids)
    per_token = torch.where(_last_token(mask), rewards[:, None], 0.0)   # [B, T]
    if token_rewards is not None:
        per_token = per_token + masked_values(token_rewards, mask)
    return whiten(discounted_returns(per_token, mask, gamma), mask, eps)


def _check_shapes(rewards: torch.Tensor, mask: torch.Tensor, token_rewards) -> None:
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)}")
    if rewards.shape != mask.shape[:1]:
        raise ValueError(f"rewards must be [B] = [{mask.shape[0]}], got {tuple(rewards.shape)}")
    if token_rewards is not None and token_rewards.shape != mask.shape:
        raise ValueError(f"token_rewards must be [B, T] = {tuple(mask.shape)}, "
                         f"got {tuple(token_rewards.shape)}")


def compute_advantages(name: str, rewards: torch.Tensor, group_ids, mask: torch.Tensor,
                       gamma: float = 1.0, eps: float = 1e-6,
                       token_rewards: torch.Tensor | None = None) -> torch.Tensor:
    """Advantages [B, T] (float32, 0 at padding) by estimator `name` (one of ESTIMATORS).

    rewards [B] one scalar per sample; group_ids [B] ints shared by the samples of one prompt;
    mask [B, T] 1 on response tokens. gamma and token_rewards [B, T] (per-token rewards such
    as a KL penalty) only make sense for the return-based reinforce_pp estimators; the
    outcome estimators refuse them rather than silently ignore them.
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; allowed: {', '.join(ESTIMATORS)}")
    rewards = torch.as_tensor(rewards, device=mask.device)
    _check_shapes(rewards, mask, token_rewards)
    if name in _OUTCOME:
        if token_rewards is not None or gamma != 1.0:
            raise ValueError(f"{name} is an outcome estimator: token_rewards and gamma != 1 need "
                             "reinforce_pp or reinforce_pp_baseline (use the KL as a loss instead)")
        if name == "grpo":
            advantages = grpo_advantages(rewards, group_ids, eps)
        elif name == "drgrpo":
            advantages = drgrpo_advantages(rewards, group_ids)
        else:
            advantages = rloo_advantages(rewards, group_ids)
        return broadcast_to_tokens(advantages, mask)
    baseline_ids = group_ids if name == "reinforce_pp_baseline" else None
    return reinforce_pp_advantages(rewards, mask, gamma, eps, token_rewards, baseline_ids)
