"""MoBA with PyTorch FlexAttention: the fast path for packed training rows on CUDA.

FlexAttention runs a fused attention kernel over the (query tile, key tile) pairs a BlockMask lists
and evaluates `mask_mod` inside the tiles it visits. Here a 128-query tile visits the key tiles that
hold its queries' own blocks and every block one of its queries chose; `mask_mod` then keeps, per
query and head, only its own choices. The cost follows the tiles visited, not T^2: with block 4096,
top-3 at 128K tokens a tile of queries that agree on their choices reads 4 of 32 blocks.

Forward and backward both come from FlexAttention (compiled on CUDA). FlexAttention has no backward
on the CPU and, uncompiled, ignores the BlockMask's tile lists, so the CPU path is `masked.py`.
"""
import torch

from .gate import block_means, choose_blocks, packed_blocks

TILE = 128    # FlexAttention's default sparse block size (queries and keys)


def flex_moba_attention(q, k, v, cu_seqlens, block_size: int, top_k: int, scale: float):
    """q, k [1, T, H, Dk]; v [1, T, H, Dv]; cu_seqlens [N + 1]. Returns o [1, T, H, Dv]."""
    from torch.nn.attention.flex_attention import flex_attention
    mask = moba_block_mask(q, k, cu_seqlens, block_size, top_k)
    attend = _compiled_flex() if q.is_cuda else flex_attention
    # [1, T, H, D] -> [1, H, T, D]
    o = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask, scale=scale)
    return o.transpose(1, 2)


def moba_block_mask(q, k, cu_seqlens, block_size: int, top_k: int):
    """The BlockMask of one packed row: the gate's choices as `mask_mod`, and per (head, query tile)
    the key tiles to visit."""
    from torch.nn.attention.flex_attention import BlockMask
    T, H = q.shape[1], q.shape[2]
    block, first, num_blocks = packed_blocks(cu_seqlens, block_size)                  # [T], [T]
    means = block_means(k[0].detach(), block, num_blocks)                             # [G, H, Dk]
    chosen = choose_blocks(q[0].detach(), means, block, first, top_k)                 # [T, H, k]
    chosen_by_head = chosen.permute(1, 0, 2).contiguous()                              # [H, T, k]
    slots = chosen.shape[-1]

    def mask_mod(b, h, q_idx, kv_idx):
        key_block = block[kv_idx]
        seen = key_block == block[q_idx]
        for slot in range(slots):
            seen = seen | (key_block == chosen_by_head[h, q_idx, slot])
        return seen & (kv_idx <= q_idx)

    kv_num, kv_index = visited_tiles(block, chosen, num_blocks, T)
    return BlockMask.from_kv_blocks(kv_num[None], kv_index[None], BLOCK_SIZE=TILE, mask_mod=mask_mod,
                                    seq_lengths=(T, T))


def visited_tiles(block, chosen, num_blocks: int, T: int):
    """Per head and query tile, the key tiles that hold a block some query of the tile uses (its own,
    or one it chose), none after the query tile. Returns (kv_num [H, nq] int32, kv_index [H, nq, nk]
    int32: the tiles, in order, then the rest), as BlockMask.from_kv_blocks takes them: it reads the
    number of key tiles from kv_index's last dimension, so that is nk, not the longest list."""
    H = chosen.shape[1]
    n_tiles = (T + TILE - 1) // TILE
    q_tile = torch.arange(T, device=block.device) // TILE
    ids = torch.arange(num_blocks, device=block.device)
    starts = torch.searchsorted(block, ids)                   # first token of each block (block is sorted)
    ends = torch.searchsorted(block, ids, right=True)         # one past its last
    first_tile, last_tile = starts // TILE, (ends - 1) // TILE
    tiles = torch.arange(n_tiles, device=block.device)
    nums, indices = [], []
    for h in range(H):                                        # a head at a time: [nq, nk] never [H, nq, nk]
        used = torch.zeros(n_tiles, num_blocks + 1, dtype=torch.int32, device=block.device)
        used[q_tile, block] = 1
        picks = chosen[:, h]                                                          # [T, k]
        used[q_tile[:, None].expand_as(picks), torch.where(picks >= 0, picks, num_blocks)] = 1
        used = used[:, :num_blocks]                                                   # [nq, G]
        edges = torch.zeros(n_tiles, n_tiles + 1, dtype=torch.int32, device=block.device)
        edges.index_add_(1, first_tile, used)                 # +1 where a used block's tiles begin
        edges.index_add_(1, last_tile + 1, -used)             # -1 just after they end
        visit = (edges.cumsum(1)[:, :n_tiles] > 0) & (tiles[None] <= tiles[:, None])  # [nq, nk]
        nums.append(visit.sum(1, dtype=torch.int32))
        order = torch.sort(visit.to(torch.int8), dim=1, descending=True, stable=True).indices   # visited first
        indices.append(order.to(torch.int32))
    return torch.stack(nums), torch.stack(indices)


_COMPILED = None


def _compiled_flex():
    """flex_attention compiled once (uncompiled it materialises the whole score matrix)."""
    global _COMPILED
    if _COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention
        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED
