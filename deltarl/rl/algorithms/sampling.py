"""Dynamic sampling (DAPO, Yu et al. 2025): keep only groups whose rewards differ.

When every sample of a prompt gets the same reward, every group-relative advantage is 0 and
the group adds no gradient, only noise to the batch size. The trainer drops such groups and
generates more until it has enough:

    kept, generated, kept_groups = [], 0, 0
    while kept_groups < target_groups and rounds < max_rounds:
        n = groups_needed(kept_groups, target_groups, keep_rate=kept_groups / generated if generated else 1.0)
        batch = generate(next n prompts, samples_per_prompt)          # rewards, group_ids, ...
        keep = dynamic_sampling_filter(batch.rewards, batch.group_ids)
        kept.append(batch[keep]); generated += n; kept_groups += number of groups kept
    then use the first target_groups kept groups.

Filter on the signal that decides correctness (DAPO filters on accuracy): with overlong
shaping, a group of all-correct answers of different lengths has unequal shaped rewards.
"""
from __future__ import annotations

import math

import torch

from .groups import group_membership


def dynamic_sampling_filter(rewards: torch.Tensor, group_ids, atol: float = 0.0) -> torch.Tensor:
    """keep_mask [B] bool: True for the samples of groups whose max - min reward > atol.

    A group of a single sample has nothing to compare to and is dropped.
    """
    rewards = torch.as_tensor(rewards).float()
    members, inverse = group_membership(group_ids, rewards)             # [G, B], [B]
    high = torch.where(members, rewards[None, :], -math.inf).amax(-1) if members.numel() else rewards
    low = torch.where(members, rewards[None, :], math.inf).amin(-1) if members.numel() else rewards
    return (high - low > atol)[inverse]


def groups_needed(num_kept: int, target: int, keep_rate: float = 1.0, min_keep_rate: float = 0.1) -> int:
    """How many prompts to generate next so that about target - num_kept groups survive.

    keep_rate is the share of groups kept so far (kept / generated); it is floored at
    min_keep_rate so one unlucky round cannot ask for an unbounded batch. 0 when done.
    """
    missing = max(target - num_kept, 0)
    if missing == 0:
        return 0
    rate = min(max(keep_rate, min_keep_rate), 1.0)
    return math.ceil(missing / rate)
