"""MoBA's gate: the past blocks of its own sequence that each query attends to.

Every sequence is cut into blocks of `block_size` tokens from its first token. A query scores each
completed block before its own by the dot product of its query with the block's mean key, per head, and
keeps the `top_k` best; it always attends to its own block too (causally). The choice is a hard top-k,
so no gradient flows through it, as in the paper.

Blocks get one global id over the batch: sequence s's blocks are consecutive ids starting at
first[s]. A token's block is then one integer, and "a past block of my own sequence" is an id range.
"""
import torch


def packed_blocks(cu_seqlens: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Blocks of packed sequences: (block [T], first [T], G): the global id of the block each packed
    token is in, the id of its sequence's first block, and the number of blocks."""
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]
    blocks_per_seq = (lengths + block_size - 1) // block_size
    first_of_seq = torch.cumsum(blocks_per_seq, 0) - blocks_per_seq
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=cu.device), lengths)   # [T]
    pos = torch.arange(len(seq), device=cu.device) - cu[seq]
    first = first_of_seq[seq]
    return first + pos // block_size, first, int(blocks_per_seq.sum())


def row_blocks(pos: torch.Tensor, block_size: int, num_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of rows that hold one sequence each: pos [B, L] is each token's position in its sequence
    (-1 for padding). Row b's blocks are ids b * num_blocks + j. Returns (block [B, L], -1 for padding;
    first [B, L])."""
    first = (torch.arange(pos.shape[0], device=pos.device) * num_blocks)[:, None].expand_as(pos)
    return torch.where(pos >= 0, first + pos.clamp(min=0) // block_size, -1), first


def block_means(k: torch.Tensor, block: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """Mean key of every block: k [N, H, D] keys, block [N] their block ids (-1: left out) ->
    [G, H, D], in float32 (float64 for float64 keys)."""
    acc = torch.float64 if k.dtype == torch.float64 else torch.float32
    slot = torch.where(block >= 0, block, num_blocks)                    # padding goes to a spare slot
    sums = k.new_zeros(num_blocks + 1, *k.shape[1:], dtype=acc).index_add_(0, slot, k.to(acc))
    counts = k.new_zeros(num_blocks + 1, dtype=acc).index_add_(0, slot, k.new_ones(len(slot), dtype=acc))
    return (sums / counts.clamp(min=1)[:, None, None])[:num_blocks]


@torch.no_grad()
def choose_blocks(q: torch.Tensor, means: torch.Tensor, own: torch.Tensor, first: torch.Tensor, top_k: int,
                  chunk: int = 4096) -> torch.Tensor:
    """The gate: q [N, H, D] queries; means [G, H, D] mean keys; own [N] each query's block (-1: a
    padding query, which chooses nothing); first [N] its sequence's first block. Returns [N, H, k] the
    chosen block ids, best first, -1 in slots left empty (fewer past blocks than top_k); k = min(top_k, G).

    Candidates are the blocks first..own-1: completed, before the query's own, in its sequence. Scores
    [chunk, H, G] are made `chunk` queries at a time so long rows never hold an [N, H, G] tensor."""
    G = means.shape[0]
    k = min(top_k, G)
    ids = torch.arange(G, device=q.device)
    out = []
    for start in range(0, q.shape[0], chunk):
        qc, oc, fc = q[start:start + chunk], own[start:start + chunk], first[start:start + chunk]
        scores = torch.einsum("nhd,ghd->nhg", qc.to(means.dtype), means)                 # [n, H, G]
        candidate = (ids[None] >= fc[:, None]) & (ids[None] < oc[:, None])               # [n, G]
        scores = scores.masked_fill(~candidate[:, None], float("-inf"))
        best, chosen = scores.topk(k, dim=-1)                                             # [n, H, k]
        out.append(torch.where(best > float("-inf"), chosen, -1))
    return torch.cat(out)
