"""Overlong reward shaping: DAPO's soft overlong punishment (Yu et al. 2025).

With L = max_tokens (the generation budget) and C = buffer (DAPO: 20480 and 4096):

    shaping(len) = 0                        if len <= L - C
                 = -(len - (L - C)) / C     if L - C < len <= L      (linear from 0 to -1)
                 = -1                       if len > L
    times penalty_factor; added to the task reward before the advantages.

Truncated responses. A response cut by the budget has len == L and gets the full penalty,
so no `truncated` flag is needed as long as max_tokens is the budget the engine used; with
buffer = 0 the shaping is a hard cliff past L only, and a truncated response (len == L) gets
0. DAPO's other remedy, overlong filtering, drops truncated samples from the loss instead:
zero their mask rows (mask[truncated] = 0). Every function in rl.algorithms accepts empty
rows without NaN, so that is safe; keep their rewards in the group statistics or not as you
prefer (filter the batch before compute_advantages to drop them from those too).
"""
from __future__ import annotations

import torch


def overlong_shaping(lengths: torch.Tensor, max_tokens: int, buffer: int,
                     penalty_factor: float = 1.0) -> torch.Tensor:
    """Reward added per sample, [B] float32, in [-penalty_factor, 0]; lengths [B] in tokens."""
    if max_tokens <= 0 or not 0 <= buffer <= max_tokens:
        raise ValueError(f"need max_tokens > 0 and 0 <= buffer <= max_tokens, got {max_tokens}, {buffer}")
    lengths = torch.as_tensor(lengths).float()
    if buffer == 0:
        return torch.where(lengths > max_tokens, -float(penalty_factor), 0.0)
    over = (lengths - (max_tokens - buffer)).clamp(min=0.0)             # tokens into the buffer
    return -penalty_factor * (over / buffer).clamp(max=1.0)
