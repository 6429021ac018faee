"""MoBA as a boolean mask for PyTorch's SDPA: the path on the CPU, and on any device for new tokens
after a cached history (a prefill in chunks).

The mask is [B, H, T, L] (every query against every key of its row), so the cost is dense attention's;
what it buys is one general form: rows may be left-padded (a decode batch), right-padded (packed
sequences gathered into rows) or hold a cached history before the T new queries.
"""
import torch
import torch.nn.functional as F

from .gate import block_means, choose_blocks, row_blocks


def masked_moba_attention(q, k, v, pos_q, pos_k, block_size: int, top_k: int, scale: float):
    """q [B, T, H, Dk] queries; k [B, L, H, Dk], v [B, L, H, Dv] keys and values; pos_q [B, T], pos_k
    [B, L] each token's position in its row's sequence, -1 for padding. Each row holds one sequence.
    Returns o [B, T, H, Dv]; a padding query attends to itself (its output is garbage, never NaN)."""
    B, T, H, _ = q.shape
    num_blocks = int(pos_k.max()) // block_size + 1
    blk_q, first_q = row_blocks(pos_q, block_size, num_blocks)                  # [B, T]
    blk_k, _ = row_blocks(pos_k, block_size, num_blocks)                        # [B, L]
    means = block_means(k.flatten(0, 1), blk_k.flatten(), B * num_blocks)       # [B * nb, H, Dk]
    chosen = choose_blocks(q.flatten(0, 1), means, blk_q.flatten(), first_q.flatten(), top_k)
    chosen = chosen.view(B, T, H, -1).transpose(1, 2)                           # [B, H, T, k]
    allowed = moba_mask(pos_q, pos_k, blk_q, blk_k, chosen)
    # [B, T, H, D] -> [B, H, T, D]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=allowed, scale=scale)
    return o.transpose(1, 2)


def moba_mask(pos_q, pos_k, blk_q, blk_k, chosen):
    """[B, H, T, L] True where query t may see key l: an earlier (or the same) token of its sequence,
    in its own block or in one it chose (chosen [B, H, T, k] block ids, -1 empty). A padding query
    sees only itself (queries are the last T tokens of the row)."""
    T, L = pos_q.shape[1], pos_k.shape[1]
    key_block = blk_k[:, None, None, :]                                          # [B, 1, 1, L]
    in_block = key_block == blk_q[:, None, :, None]                              # own block [B, 1, T, L]
    for slot in range(chosen.shape[-1]):
        in_block = in_block | (key_block == chosen[..., slot, None])              # [B, H, T, L]
    causal = (pos_k[:, None, :] <= pos_q[:, :, None]) & (pos_k[:, None, :] >= 0)  # [B, T, L]
    allowed = in_block & causal[:, None]
    is_self = torch.arange(L - T, L, device=pos_q.device)[:, None] == torch.arange(L, device=pos_q.device)
    pad_self = (pos_q[:, :, None] < 0) & is_self                                  # [B, T, L]
    return allowed | pad_self[:, None]
