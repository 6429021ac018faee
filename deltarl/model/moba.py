"""MoBA in the decode cache: the gate's block means kept as tokens arrive, and one decode step that
attends over the chosen blocks only.

An MLA key is k = [W_k c, k_pe] for the token's latent c, so the mean key of a block is
[W_k mean(c), mean(k_pe)]: the cache keeps, per sequence and block, the sum of c ‖ k_pe, and a step's
gate is q_latent . mean(c) + q_pe . mean(k_pe) with q_latent = q_nope W_k (`latent_query`), per head,
without expanding a key. The training path (`deltarl.kernels.moba`) pools the expanded keys instead;
the two agree up to rounding.
"""
import torch


def add_to_block_sums(sums, latent, k_pe, valid, block_size: int):
    """sums [B, blocks, R + rope] (or None) plus the n tokens just appended: latent [B, n, R], k_pe
    [B, n, rope]; valid [B, L] the cache's real tokens, these included (their positions in their
    sequences follow from it; padding adds nothing). Sums are float32 (float64 for a float64 cache)."""
    n = latent.shape[1]
    new_valid = valid[:, -n:]
    block = ((valid.long().cumsum(1)[:, -n:] - 1).clamp(min=0) // block_size)          # [B, n]
    acc = torch.float64 if latent.dtype == torch.float64 else torch.float32
    values = torch.cat([latent, k_pe], dim=-1).to(acc) * new_valid[..., None]           # [B, n, W]
    blocks = int(block.max()) + 1
    if sums is None:
        sums = values.new_zeros(values.shape[0], blocks, values.shape[2])
    elif sums.shape[1] < blocks:                       # a new block starts: room for it
        sums = torch.cat([sums, sums.new_zeros(sums.shape[0], blocks - sums.shape[1], sums.shape[2])], 1)
    return sums.scatter_add(1, block[..., None].expand_as(values), values)


def moba_decode_step(attn, q, latent, k_pe, cache):
    """One new token per sequence of the MoBA layer `attn` (a KimiMLAAttention): choose blocks by the
    cached block means, then attend in the latent space over the chosen blocks and the token's own.
    q [B, 1, H, nope + rope]; latent [B, L, R], k_pe [B, L, rope] the history, the new token last.
    Returns [B, 1, H, v]."""
    block_size, _ = attn.moba
    valid = cache.valid                                                     # [B, L]
    B, L = valid.shape
    n = valid.sum(1)                                                        # real tokens per row
    start = L - n                                                           # each row's first real token
    if not torch.equal(valid, torch.arange(L, device=valid.device)[None] >= start[:, None]):
        raise ValueError("MoBA decoding needs each row's real tokens to be a suffix (left padding only)")
    chosen = _chosen_blocks(attn, q, cache.layers[attn.layer_idx].block_sums, n)   # [B, H, blocks]
    used = chosen.any(1)                                                    # [B, blocks], any head
    width = int(used.sum(1).max())
    if width * block_size >= L:             # the chosen blocks are most of the history: mask, don't copy
        block = (torch.arange(L, device=valid.device)[None] - start[:, None]).clamp(min=0) // block_size
        keep = chosen.gather(2, block[:, None].expand(B, chosen.shape[1], L)) & valid[:, None]
        return attn._latent_attention(q, latent, k_pe, keep[:, :, None])    # mask [B, H, 1, L]
    blocks = torch.sort(used.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :width]
    token = blocks[..., None] * block_size + torch.arange(block_size, device=valid.device)   # [B, w, Bs]
    slot = (start[:, None, None] + token).clamp(max=L - 1).flatten(1)      # [B, w * Bs] cache positions
    keep = chosen.gather(2, blocks[:, None].expand(B, chosen.shape[1], width))             # [B, H, w]
    keep = keep[..., None] & (token < n[:, None, None])[:, None]            # [B, H, w, Bs]
    latent = latent.gather(1, slot[..., None].expand(B, slot.shape[1], latent.shape[2]))
    k_pe = k_pe.gather(1, slot[..., None].expand(B, slot.shape[1], k_pe.shape[2]))
    return attn._latent_attention(q, latent, k_pe, keep.flatten(2)[:, :, None])


def _chosen_blocks(attn, q, block_sums, n):
    """[B, H, blocks] bool: the blocks each head of the new token attends to, its own and the top_k
    completed blocks before it by q . mean key. block_sums [B, blocks, R + rope]; n [B] real tokens."""
    block_size, top_k = attn.moba
    blocks = block_sums.shape[1]
    ids = torch.arange(blocks, device=n.device)
    counts = (n[:, None] - ids * block_size).clamp(0, block_size)                         # [B, blocks]
    mean_c, mean_pe = (block_sums / counts.clamp(min=1)[..., None]).split(
        [attn.kv_lora_rank, attn.rope_dim], dim=-1)
    q_latent, q_pe = attn.latent_query(q)                                  # [B, H, 1, R], [B, 1, H, rope]
    scores = (torch.einsum("bhr,bjr->bhj", q_latent[:, :, 0].to(mean_c.dtype), mean_c)
              + torch.einsum("bhd,bjd->bhj", q_pe[:, 0].to(mean_pe.dtype), mean_pe))   # [B, H, blocks]
    own = (n - 1) // block_size
    scores = scores.masked_fill((ids[None] >= own[:, None])[:, None], float("-inf"))
    best, pick = scores.topk(min(top_k, blocks), dim=-1)
    chosen = torch.zeros_like(scores, dtype=torch.bool).scatter(2, pick, best > float("-inf"))
    return chosen | (ids[None] == own[:, None])[:, None]
