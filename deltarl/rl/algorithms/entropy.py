"""Token entropy of the policy from its logits, and the entropy bonus.

H = -sum_v p_v log p_v = logsumexp(z) - sum_v softmax(z)_v z_v, computed in float32. The
vocabulary of Kimi Linear is ~160k, so [N, V] float32 temporaries are large: the tokens are
processed `chunk_size` at a time and, when a gradient is needed, each chunk is checkpointed
(recomputed in backward) so that memory stays at one chunk's worth, not the whole batch's.
Logits must already be divided by the sampling temperature if the rollout used one.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .aggregation import aggregate


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """[..., V] -> [...] entropy, float32 (float64 for float64 logits). A -inf logit (a token the
    top-k / top-p filter removed) has probability 0 and adds 0 * 0, not 0 * -inf = NaN; unlike a clamp
    to float32's min, its zero gradient cannot overflow when the loss scales the entropy by more than 1."""
    z = logits if logits.dtype == torch.float64 else logits.float()
    finite_z = z.masked_fill(z == float("-inf"), 0.0)
    return torch.logsumexp(z, -1) - (torch.softmax(z, -1) * finite_z).sum(-1)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """[B, T, V] (any leading dims) -> [B, T] entropy (float32; float64 logits stay float64), chunk_size tokens at a time."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    flat = logits.reshape(-1, logits.shape[-1])                          # [N, V]
    track = torch.is_grad_enabled() and logits.requires_grad
    parts = []
    for chunk in flat.split(chunk_size):
        if track:   # keep only the chunk (a view of logits) for backward; recompute the rest
            parts.append(checkpoint(entropy_of, chunk, use_reentrant=False, preserve_rng_state=False))
        else:
            parts.append(entropy_of(chunk))
    out = torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float32)
    return out.reshape(logits.shape[:-1])


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, aggregation: str = "token",
                  max_len: int | None = None, denominator: torch.Tensor | float | None = None) -> torch.Tensor:
    """Aggregated entropy (scalar); the loss subtracts coef * entropy_bonus to keep exploring.

    Use the loss's own aggregation (and, per micro-batch, its denominator) so that the bonus
    weighs each token exactly as the policy loss does: a token mean under "sequence" or Dr.GRPO
    aggregation would favour long responses where the loss does not."""
    return aggregate(entropy, mask, aggregation, max_len, denominator)
