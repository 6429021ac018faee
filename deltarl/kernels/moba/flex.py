"""MoBA with PyTorch FlexAttention: the fast path for packed training rows on CUDA.

FlexAttention runs a fused attention kernel over the (query tile, key tile) pairs a BlockMask lists,
evaluating `mask_mod` inside the tiles it visits; forward and backward (log-sum-exp included) are
compiled kernels. Two ways to cast MoBA on it:

- "gathered" (the default): a query's softmax over its visible keys splits into parts whose results
  merge by their log-sum-exps: its own block (causal) and each chosen past block. The own blocks are
  one call whose tiles hug the diagonal. For the chosen blocks every (head, query, slot) pick becomes a
  row of a virtual query sequence sorted by the block it picked, so consecutive rows share a block and
  a tile of rows visits one or two blocks' keys: the cost is about T * top_k * block_size whatever the
  gate picks, at the memory of top_k copies of q and of the output.
- "tiled": one call in the real query order; a tile of 128 queries visits every block any of them
  picked. No copies, but sparse only as far as neighbouring queries agree on their blocks.

FlexAttention has no backward on the CPU, and uncompiled it ignores the tile lists, so the CPU tests
run both ways through `dense_attend` (same contract, evaluated densely, checking the tile lists).
"""
import torch

from .gate import block_means, choose_blocks, packed_blocks

TILE = 128          # keys per tile, and queries per tile in real order
PICK_TILE = 512     # virtual rows per tile: sorted rows change block rarely, so bigger tiles waste little


def flex_moba_attention(q, k, v, cu_seqlens, block_size: int, top_k: int, scale: float,
                        impl: str = "gathered", attend=None):
    """q, k [1, T, H, Dk]; v [1, T, H, Dv]; cu_seqlens [N + 1]. Returns o [1, T, H, Dv].
    attend(q, k, v, mask_mod, tiles, scale) -> (o, lse) runs one attention; FlexAttention by default."""
    attend = attend or flex_attend
    block, first, num_blocks = packed_blocks(cu_seqlens, block_size)                  # [T], [T]
    means = block_means(k[0].detach(), block, num_blocks)                             # [G, H, Dk]
    chosen = choose_blocks(q[0].detach(), means, block, first, top_k)                 # [T, H, slots]
    layout = _BlockLayout(block, num_blocks)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))                               # [1, H, T, D]
    if impl == "tiled":
        o, _ = _tiled(qh, kh, vh, layout, chosen, scale, attend)
    elif impl == "gathered":
        o = _gathered(qh, kh, vh, layout, chosen, scale, attend)
    else:
        raise ValueError(f"impl must be 'gathered' or 'tiled', got {impl!r}")
    return o.transpose(1, 2)


class _BlockLayout:
    """Where the blocks of a packed row lie: block [T] of each token, and per block its key tiles."""

    def __init__(self, block, num_blocks):
        self.block, self.num_blocks, self.T = block, num_blocks, len(block)
        ids = torch.arange(num_blocks, device=block.device)
        starts = torch.searchsorted(block, ids)               # first token of each block (block is sorted)
        ends = torch.searchsorted(block, ids, right=True)     # one past its last
        self.first_tile, self.last_tile = starts // TILE, (ends - 1) // TILE
        self.key_tiles = (self.T + TILE - 1) // TILE

    def visited(self, row_blocks, rows_per_tile: int, causal: bool):
        """[nq, nk] bool: the key tiles holding any block a tile of rows uses. row_blocks [R, m]: the blocks
        row r uses (-1: none); rows_per_tile rows make a query tile; causal: no key tile after the
        query tile (rows in real query order)."""
        R, G = row_blocks.shape[0], self.num_blocks
        n_q = (R + rows_per_tile - 1) // rows_per_tile
        row_tile = torch.arange(R, device=row_blocks.device) // rows_per_tile
        used = torch.zeros(n_q, G + 1, dtype=torch.int32, device=row_blocks.device)
        used[row_tile[:, None].expand_as(row_blocks), torch.where(row_blocks >= 0, row_blocks, G)] = 1
        used = used[:, :G]                                                       # [nq, G]
        edges = torch.zeros(n_q, self.key_tiles + 1, dtype=torch.int32, device=used.device)
        edges.index_add_(1, self.first_tile, used)           # +1 where a used block's tiles begin
        edges.index_add_(1, self.last_tile + 1, -used)       # -1 just after they end
        visit = edges.cumsum(1)[:, :self.key_tiles] > 0
        if causal:
            key_tile = torch.arange(self.key_tiles, device=used.device)
            visit &= key_tile[None] <= torch.arange(n_q, device=used.device)[:, None]
        return visit


def _tiled(q, k, v, layout, chosen, scale, attend):
    """One attention in real query order; a query sees its own block (causally) and its picks."""
    block, slots = layout.block, chosen.shape[-1]
    chosen_by_head = chosen.permute(1, 0, 2).contiguous()                            # [H, T, slots]

    def mask_mod(b, h, q_idx, kv_idx):
        key_block = block[kv_idx]
        seen = key_block == block[q_idx]
        for slot in range(slots):
            seen = seen | (key_block == chosen_by_head[h, q_idx, slot])
        return seen & (kv_idx <= q_idx)

    visits = [layout.visited(torch.cat([block[:, None], chosen[:, h]], 1), TILE, causal=True)
              for h in range(chosen.shape[1])]                                 # a head at a time
    return attend(q, k, v, mask_mod, Tiles(visits, TILE), scale)


def _gathered(q, k, v, layout, chosen, scale, attend):
    """Own blocks and chosen blocks as two attentions, merged by log-sum-exp."""
    block, G = layout.block, layout.num_blocks
    H, T, slots = q.shape[1], q.shape[2], chosen.shape[-1]

    def own_block(b, h, q_idx, kv_idx):
        return (block[kv_idx] == block[q_idx]) & (kv_idx <= q_idx)

    own_tiles = Tiles([layout.visited(block[:, None], TILE, causal=True)], TILE)      # one for all heads
    o_own, lse_own = attend(q, k, v, own_block, own_tiles, scale)                    # [1, H, T, Dv], [1, H, T]

    picks = chosen.permute(1, 0, 2).reshape(H, T * slots)          # [H, R]: row t * slots + s, -1 empty
    order = torch.argsort(torch.where(picks >= 0, picks, G), dim=1, stable=True)    # rows by block
    unsort = torch.argsort(order, dim=1)                                             # its inverse
    row_block = picks.gather(1, order)                                               # [H, R]
    q_rows = PermuteRows.apply(q[0], order, unsort, slots)[None]      # [1, H, R, Dk]: a q copy per pick

    def picked_block(b, h, q_idx, kv_idx):
        return block[kv_idx] == row_block[h, q_idx]

    pick_tiles = Tiles([layout.visited(row_block[h][:, None], PICK_TILE, causal=False) for h in range(H)],
                       PICK_TILE)
    o_rows, lse_rows = attend(q_rows, k, v, picked_block, pick_tiles, scale)        # [1, H, R, Dv], [1, H, R]
    # back to query order: [1, H, R, ...] -> [1, H, T, slots, ...]
    o_picks = PermuteRows.apply(o_rows[0], unsort, order).view(H, T, slots, -1)[None]
    lse_picks = PermuteRows.apply(lse_rows[0][..., None], unsort, order).view(H, T, slots)[None]
    return _merge(o_own, lse_own, o_picks, lse_picks)


class PermuteRows(torch.autograd.Function):
    """Rows of x [H, N, D] in the order perm [H, R], a permutation of the R = N * copies rows of
    `copies` copies of each row (row n * copies + c is copy c of row n): out[h, r] = x[h, perm[h, r] // copies].
    torch.gather's backward scatter-adds (atomic adds, slow for the gigabytes of q and o copies the
    gathered way moves); this backward gathers by the inverse permutation and adds each row's copies."""

    @staticmethod
    def forward(ctx, x, perm, inverse, copies=1):
        ctx.save_for_backward(inverse)
        ctx.copies = copies
        source = perm // copies if copies > 1 else perm
        return x.gather(1, source[..., None].expand(*perm.shape, x.shape[2]))

    @staticmethod
    def backward(ctx, grad):
        inverse, = ctx.saved_tensors
        H, R, D = grad.shape
        in_order = grad.gather(1, inverse[..., None].expand_as(grad))                  # [H, R, D], row n * copies + c
        return in_order.view(H, R // ctx.copies, ctx.copies, D).sum(2), None, None, None


def _merge(o_own, lse_own, o_picks, lse_picks):
    """Softmax over the union of the parts: o_own [1, H, T, Dv], lse_own [1, H, T]; o_picks
    [1, H, T, slots, Dv], lse_picks [1, H, T, slots] (-inf for an empty slot, whose output is 0).
    The shares come from the lse in float32 (or float64); the weighted sum runs in the outputs' dtype,
    since float32 copies of o_picks would cost more memory than the attention (bf16: the shares are
    rounded to bf16 once more)."""
    acc = torch.promote_types(o_own.dtype, torch.float32)
    lse = torch.cat([lse_own[..., None], lse_picks], dim=-1).to(acc)                 # [1, H, T, 1 + slots]
    share = torch.softmax(lse, dim=-1).to(o_own.dtype)       # exp(lse_part - lse_total) of each part
    return share[..., 0, None] * o_own + (share[..., 1:, None] * o_picks).sum(-2)


class Tiles:
    """Per head (or one for all heads), the key tiles each query tile visits."""

    def __init__(self, visits, rows_per_tile):
        self.visits, self.rows_per_tile = visits, rows_per_tile

    def block_mask(self, mask_mod, q_len, kv_len):
        """The BlockMask FlexAttention follows."""
        from torch.nn.attention.flex_attention import BlockMask
        nums = torch.stack([v.sum(1, dtype=torch.int32) for v in self.visits])                # [H, nq]
        # tiles in order, visited first; from_kv_blocks reads the number of key tiles from the last dim
        index = torch.stack([torch.sort(v.to(torch.int8), dim=1, descending=True, stable=True).indices
                             .to(torch.int32) for v in self.visits])                            # [H, nq, nk]
        return BlockMask.from_kv_blocks(nums[None], index[None], BLOCK_SIZE=(self.rows_per_tile, TILE),
                                        mask_mod=mask_mod, seq_lengths=(q_len, kv_len))

    def dense(self, q_len, kv_len):
        """[H or 1, q_len, kv_len] True inside the visited tiles."""
        visit = torch.stack(self.visits)
        visit = visit.repeat_interleave(self.rows_per_tile, 1).repeat_interleave(TILE, 2)
        return visit[:, :q_len, :kv_len]


def flex_attend(q, k, v, mask_mod, tiles, scale):
    """FlexAttention (compiled on CUDA) over the tiles: (o [1, H, Tq, Dv], lse [1, H, Tq] float32)."""
    from torch.nn.attention.flex_attention import flex_attention
    mask = tiles.block_mask(mask_mod, q.shape[2], k.shape[2])
    run = _compiled_flex() if q.is_cuda else flex_attention
    return run(q, k, v, block_mask=mask, scale=scale, return_lse=True)


def dense_attend(q, k, v, mask_mod, tiles, scale):
    """flex_attend's contract by plain PyTorch, for tests on the CPU: mask_mod evaluated at every
    (query, key), a row with no visible key gives o = 0 and lse = -inf as FlexAttention does, and every
    visible pair must lie in a visited tile (a tile left out would drop keys silently on the GPU)."""
    H, Tq, Tk = q.shape[1], q.shape[2], k.shape[2]
    heads = torch.arange(H)[:, None, None]
    allowed = mask_mod(0, heads, torch.arange(Tq)[None, :, None], torch.arange(Tk)[None, None, :])
    allowed = allowed.expand(H, Tq, Tk)
    if not bool((tiles.dense(Tq, Tk) | ~allowed).all()):
        raise AssertionError("a visible (query, key) pair lies outside the visited tiles")
    has_key = allowed.any(-1, keepdim=True)                                                # [H, Tq, 1]
    scores = (q[0] @ k[0].transpose(1, 2) * scale).masked_fill(~allowed, float("-inf"))   # [H, Tq, Tk]
    scores = scores.masked_fill(~has_key, 0.0)           # an empty row: finite, its gradient stays 0
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    weights = torch.exp(scores - lse) * has_key
    return (weights @ v[0])[None], lse[..., 0].masked_fill(~has_key[..., 0], float("-inf"))[None]


_COMPILED = None


def _compiled_flex():
    """flex_attention compiled once (uncompiled it materialises the whole score matrix), with dynamic
    shapes: packed rows change length every step. Each mask_mod (own blocks, picks, tiled per top_k) and
    dtype is a graph of the one flex_attention frame, which may pass Dynamo's default 8 per frame, past
    which it would silently run uncompiled: the limit is raised to 64."""
    global _COMPILED
    if _COMPILED is None:
        import torch._dynamo
        from torch.nn.attention.flex_attention import flex_attention
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        _COMPILED = torch.compile(flex_attention, dynamic=True)
    return _COMPILED


def moba_block_mask(q, k, cu_seqlens, block_size: int, top_k: int):
    """The BlockMask of the "tiled" way for one packed row (for inspection and tests)."""
    block, first, num_blocks = packed_blocks(cu_seqlens, block_size)
    chosen = choose_blocks(q[0].detach(), block_means(k[0].detach(), block, num_blocks), block, first, top_k)
    captured = {}

    def keep(q_, k_, v_, mask_mod, tiles, scale):
        captured["mask"] = tiles.block_mask(mask_mod, q_.shape[2], k_.shape[2])
        return None, None

    _tiled(q.transpose(1, 2), k.transpose(1, 2), None, _BlockLayout(block, num_blocks), chosen, 1.0, keep)
    return captured["mask"]
