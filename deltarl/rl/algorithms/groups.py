"""Per-group statistics of a per-sample tensor: the n samples drawn for one prompt form a group.

group_ids [B] are integers shared by the samples of one prompt; they need not be contiguous,
sorted, or start at 0. Reductions use a [G, B] membership matrix and plain sums instead of
scatter_add / index_add, whose float versions are not deterministic on CUDA; B is a batch of
samples (thousands at most), so the matrix stays small.
"""
from __future__ import annotations

import torch


def _as_ids(group_ids, like: torch.Tensor) -> torch.Tensor:
    if group_ids is None:
        raise ValueError("group_ids are needed: one integer per sample, shared by a prompt's samples")
    ids = torch.as_tensor(group_ids, device=like.device)
    if ids.shape != like.shape[:1] or ids.dim() != 1:
        raise ValueError(f"group_ids must have shape [B] = [{like.shape[0]}], got {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex():
        raise ValueError("group_ids must be integers (or bools)")
    return ids


def group_membership(group_ids, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(members [G, B] bool, inverse [B] long): members[g, i] is True when sample i is in group g,
    inverse[i] is the group of sample i (groups numbered 0..G-1 in sorted id order)."""
    ids = _as_ids(group_ids, like)
    _, inverse = torch.unique(ids, return_inverse=True)                 # [B]
    num_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    groups = torch.arange(num_groups, device=ids.device)
    return inverse[None, :] == groups[:, None], inverse


def group_sum(values: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """[B] values -> [G] sum over each group's samples."""
    return torch.where(members, values[None, :], 0.0).sum(-1)


def group_stats(values: torch.Tensor, group_ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each sample, the (mean [B], std [B], size [B]) of its group, in float32.

    std is the unbiased (Bessel-corrected) sample std, as torch.std and the GRPO
    implementations use; a group of one sample has std 0.
    """
    values = values.float()
    members, inverse = group_membership(group_ids, values)
    size = members.sum(-1)                                               # [G]
    mean = group_sum(values, members) / size.clamp(min=1)                # [G]
    centred = values - mean[inverse]                                     # [B]
    var = group_sum(centred * centred, members) / (size - 1).clamp(min=1)
    return mean[inverse], var.sqrt()[inverse], size[inverse]
