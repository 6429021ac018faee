"""MoBA as one Triton attention over (query, block) rows: every query's own block and each block it picked
is a row; rows are sorted by block per head, so a tile of rows reads one block's keys (rarely two).

Rows hold no copy of q: a row is (query index, block id) and the kernels load the query by index. A row
sees the keys of its block up to its query (causal: for a picked block, an earlier complete block,
that is every key). The rows of a query then merge by their log-sum-exps (`flex._merge`).

Backward is FlashAttention-2's: dq by row tiles (recomputing the probabilities from the saved lse), dk and
dv by key tiles, each key tile of a block visiting the rows sorted into that block (no atomics: every key
tile belongs to one block and one program). A query's rows then add up into its dq, a head at a time.
"""
import torch
import triton
import triton.language as tl

# (rows, keys) per tile of each kernel, and the launch: at MLA's head sizes (qk 192, padded to 256; v 128)
# these compile for sm_90 without register spills (benchmarks/moba_static.py); larger tiles spill
FWD_TILES, DQ_TILES, DKDV_TILES = (64, 64), (32, 32), (32, 32)
LAUNCH = dict(num_warps=8, num_stages=2)


@triton.jit
def _token_rows(X, tokens, h, H, D: tl.constexpr, BD: tl.constexpr, mask):
    """x[tokens, h, :D] of a [T, H, D] tensor, padded to [n, BD] (zeros where masked)."""
    d = tl.arange(0, BD)
    return tl.load(X + (tokens[:, None] * H + h) * D + d[None, :], mask=mask[:, None] & (d[None, :] < D), other=0.0)


@triton.jit
def _row_tile(ROW_Q, ROW_G, tile, h, R, num_blocks, BM: tl.constexpr):
    """Tile `tile` of head h's sorted rows: (offsets into [H, R] (64-bit: H * R * Dv passes 2**31), in range,
    block [BM] (num_blocks: none), query token [BM], first and last block of the tile)."""
    rows = tile * BM + tl.arange(0, BM)
    in_r = rows < R
    g_lo = tl.load(ROW_G + h * R + tile * BM)                                 # rows are sorted by block:
    g_hi = tl.minimum(tl.load(ROW_G + h * R + tl.minimum(tile * BM + BM, R) - 1), num_blocks - 1)  # first, last
    rows = h.to(tl.int64) * R + rows
    g = tl.load(ROW_G + rows, mask=in_r, other=num_blocks)
    t = tl.load(ROW_Q + rows, mask=in_r, other=0).to(tl.int64)
    return rows, in_r, g, t, g_lo, g_hi


@triton.jit
def _key_tile(q, K, V, first, end, blk, g, t, h, H, scale, DK: tl.constexpr, DV: tl.constexpr,
              BDK: tl.constexpr, BDV: tl.constexpr, BN: tl.constexpr):
    """Keys first..first+BN (those < end) of block blk against a row tile's q: k [BN, BDK], v [BN, BDV], the
    scaled scores s [BM, BN] and which of them each row sees (its own block's keys up to its query)."""
    keys = (first + tl.arange(0, BN)).to(tl.int64)
    in_k = keys < end
    k = _token_rows(K, keys, h, H, DK, BDK, in_k)
    v = _token_rows(V, keys, h, H, DV, BDV, in_k)
    s = tl.dot(q, tl.trans(k)).to(tl.float32) * scale
    seen = (g[:, None] == blk) & in_k[None, :] & (keys[None, :] <= t[:, None])
    return k, v, s, seen


@triton.jit
def _rows_fwd(Q, K, V, O, LSE, ROW_Q, ROW_G, G_START, R, H, num_blocks, scale, KEY_TILES: tl.constexpr,
              DK: tl.constexpr, DV: tl.constexpr, BDK: tl.constexpr, BDV: tl.constexpr,
              BM: tl.constexpr, BN: tl.constexpr):
    """One tile of BM sorted rows of head h: o [BM, DV] and lse [BM] over each row's block keys <= its query."""
    tile, h = tl.program_id(0), tl.program_id(1)
    rows, in_r, g, t, g_lo, g_hi = _row_tile(ROW_Q, ROW_G, tile, h, R, num_blocks, BM)
    dv = tl.arange(0, BDV)
    q = _token_rows(Q, t, h, H, DK, BDK, in_r)
    m = tl.full([BM], float("-inf"), tl.float32)
    l = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BDV], tl.float32)
    blk = g_lo
    while blk <= g_hi:                    # the blocks of this tile's rows: one, sometimes two
        start = tl.load(G_START + blk)
        end = tl.load(G_START + blk + 1)
        for j in range(0, KEY_TILES):     # key tiles of the block (at most max_block keys)
            k, v, s, seen = _key_tile(q, K, V, start + j * BN, end, blk, g, t, h, H, scale, DK, DV, BDK, BDV, BN)
            s = tl.where(seen, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m - m_safe)
            l = l * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
            m = m_new
        blk += 1
    has = l > 0
    o = acc / tl.where(has, l, 1.0)[:, None]
    lse = tl.where(has, m + tl.log(tl.where(has, l, 1.0)), float("-inf"))
    tl.store(O + rows[:, None] * DV + dv[None, :], o.to(O.dtype.element_ty),
             mask=in_r[:, None] & (dv[None, :] < DV))
    tl.store(LSE + rows, lse, mask=in_r)


@triton.jit
def _rows_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, ROW_Q, ROW_G, G_START, R, H, num_blocks, scale,
                 KEY_TILES: tl.constexpr,
                 DK: tl.constexpr, DV: tl.constexpr, BDK: tl.constexpr, BDV: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr):
    """dq [BM, DK] of a tile of sorted rows (float32, in row order)."""
    tile, h = tl.program_id(0), tl.program_id(1)
    rows, in_r, g, t, g_lo, g_hi = _row_tile(ROW_Q, ROW_G, tile, h, R, num_blocks, BM)
    dk, dv = tl.arange(0, BDK), tl.arange(0, BDV)
    q = _token_rows(Q, t, h, H, DK, BDK, in_r)
    do = tl.load(DO + rows[:, None] * DV + dv[None, :], mask=in_r[:, None] & (dv[None, :] < DV), other=0.0)
    lse = tl.load(LSE + rows, mask=in_r, other=float("-inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)                 # a row with no key: p = 0
    delta = tl.load(DELTA + rows, mask=in_r, other=0.0)
    dq = tl.zeros([BM, BDK], tl.float32)
    blk = g_lo
    while blk <= g_hi:                    # the blocks of this tile's rows: one, sometimes two
        start = tl.load(G_START + blk)
        end = tl.load(G_START + blk + 1)
        for j in range(0, KEY_TILES):     # key tiles of the block (at most max_block keys)
            k, v, s, seen = _key_tile(q, K, V, start + j * BN, end, blk, g, t, h, H, scale, DK, DV, BDK, BDV, BN)
            p = tl.where(seen, tl.exp(s - lse[:, None]), 0.0)                        # [BM, BN]
            dp = tl.dot(do, tl.trans(v)).to(tl.float32)
            ds = p * (dp - delta[:, None]) * scale
            dq += tl.dot(ds.to(k.dtype), k).to(tl.float32)
        blk += 1
    tl.store(DQ + rows[:, None] * DK + dk[None, :], dq.to(DQ.dtype.element_ty), mask=in_r[:, None] & (dk[None, :] < DK))


@triton.jit
def _rows_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DKEY, DVAL, ROW_Q, SEG_START, G_START, R, H, num_blocks, scale,
                   DK: tl.constexpr, DV: tl.constexpr, BDK: tl.constexpr, BDV: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr):
    """dk, dv [BN, D] of key tile j of block blk, head h, from the rows sorted into that block."""
    blk, j, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(G_START + blk)
    end = tl.load(G_START + blk + 1)
    keys = (start + j * BN + tl.arange(0, BN)).to(tl.int64)
    in_k = keys < end
    if start + j * BN < end:
        dk_, dv_ = tl.arange(0, BDK), tl.arange(0, BDV)
        k = _token_rows(K, keys, h, H, DK, BDK, in_k)
        v = _token_rows(V, keys, h, H, DV, BDV, in_k)
        dkey = tl.zeros([BN, BDK], tl.float32)
        dval = tl.zeros([BN, BDV], tl.float32)
        r_lo = tl.load(SEG_START + h * (num_blocks + 1) + blk)
        r_hi = tl.load(SEG_START + h * (num_blocks + 1) + blk + 1)
        r0 = r_lo
        while r0 < r_hi:                  # the rows sorted into this block
            rows = r0 + tl.arange(0, BM)
            in_r = rows < r_hi
            rows = h.to(tl.int64) * R + rows             # offsets into [H, R]
            t = tl.load(ROW_Q + rows, mask=in_r, other=0).to(tl.int64)
            q = _token_rows(Q, t, h, H, DK, BDK, in_r)
            do = tl.load(DO + rows[:, None] * DV + dv_[None, :], mask=in_r[:, None] & (dv_[None, :] < DV), other=0.0)
            lse = tl.load(LSE + rows, mask=in_r, other=float("inf"))
            delta = tl.load(DELTA + rows, mask=in_r, other=0.0)
            s = tl.dot(q, tl.trans(k)).to(tl.float32) * scale                         # [BM, BN]
            seen = in_r[:, None] & in_k[None, :] & (keys[None, :] <= t[:, None])
            p = tl.where(seen, tl.exp(s - lse[:, None]), 0.0)
            dval += tl.dot(tl.trans(p.to(do.dtype)), do).to(tl.float32)
            dp = tl.dot(do, tl.trans(v)).to(tl.float32)
            ds = p * (dp - delta[:, None]) * scale
            dkey += tl.dot(tl.trans(ds.to(q.dtype)), q).to(tl.float32)
            r0 += BM
        tl.store(DKEY + (keys[:, None] * H + h) * DK + dk_[None, :], dkey, mask=in_k[:, None] & (dk_[None, :] < DK))
        tl.store(DVAL + (keys[:, None] * H + h) * DV + dv_[None, :], dval, mask=in_k[:, None] & (dv_[None, :] < DV))


class RowAttention(torch.autograd.Function):
    """(o_rows [H, R, Dv], lse_rows [H, R] float32) of the sorted rows; q, k [T, H, Dk], v [T, H, Dv];
    row_query, row_block [H, R] int32 (row_block = num_blocks: an empty row, o = 0, lse = -inf);
    block_start [G + 1] int32 (block g is tokens block_start[g] .. block_start[g + 1] - 1);
    max_block: the most tokens in a block."""

    @staticmethod
    def forward(ctx, q, k, v, row_query, row_block, block_start, max_block: int, scale: float):
        H, R = row_query.shape
        G = block_start.numel() - 1
        Dk, Dv = q.shape[-1], v.shape[-1]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o = q.new_empty(H, R, Dv)
        lse = torch.empty(H, R, dtype=torch.float32, device=q.device)
        dims = dict(DK=Dk, DV=Dv, BDK=max(16, triton.next_power_of_2(Dk)),   # tl.dot needs every dimension >= 16
                    BDV=max(16, triton.next_power_of_2(Dv)))
        BM, BN = FWD_TILES
        # KEY_TILES: key tiles in the longest block, constant per block size (compiled once)
        _rows_fwd[(triton.cdiv(R, BM), H)](q, k, v, o, lse, row_query, row_block, block_start, R, H, G, scale,
                                           KEY_TILES=triton.cdiv(max_block, BN), BM=BM, BN=BN, **dims, **LAUNCH)
        ctx.save_for_backward(q, k, v, o, lse, row_query, row_block, block_start)
        ctx.scale, ctx.max_block, ctx.dims = scale, max_block, dims
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse, row_query, row_block, block_start = ctx.saved_tensors
        H, R = row_query.shape
        G = block_start.numel() - 1
        do = do.contiguous()
        # [H, R] float32, a head at a time: float32 copies of do and o whole would be gigabytes at 128K
        delta = torch.stack([(do[h].float() * o[h].float()).sum(-1) for h in range(H)])
        if dlse is not None:              # the merge differentiates through the lse: d lse / d s = p
            delta = delta - dlse.float()
        dq_rows = torch.zeros(H, R, q.shape[-1], dtype=q.dtype, device=q.device)   # a query's rows add up below
        BM, BN = DQ_TILES
        _rows_bwd_dq[(triton.cdiv(R, BM), H)](q, k, v, do, lse, delta, dq_rows, row_query, row_block, block_start,
                                              R, H, G, ctx.scale, KEY_TILES=triton.cdiv(ctx.max_block, BN), BM=BM,
                                              BN=BN, **ctx.dims, **LAUNCH)
        # rows of each block per head: [H, G + 1] offsets into the sorted rows
        ids = torch.arange(G + 1, device=q.device, dtype=row_block.dtype)
        seg_start = torch.searchsorted(row_block.contiguous(), ids[None].expand(H, G + 1).contiguous()).to(torch.int32)
        dkey = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dval = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        BM, BN = DKDV_TILES
        _rows_bwd_dkdv[(G, triton.cdiv(ctx.max_block, BN), H)](
            q, k, v, do, lse, delta, dkey, dval, row_query, seg_start.contiguous(), block_start, R, H, G,
            ctx.scale, BM=BM, BN=BN, **ctx.dims, **LAUNCH)
        dq = _rows_to_queries(dq_rows, row_query, q.shape[0])
        return dq.to(q.dtype), dkey.to(k.dtype), dval.to(v.dtype), None, None, None, None, None


def _rows_to_queries(dq_rows, row_query, T):
    """dq [T, H, Dk] float32: the sum of each query's rows (dq_rows [H, R, Dk] in sorted order), a head at
    a time (the rows of all heads are several times q's size)."""
    H, R, Dk = dq_rows.shape
    dq = dq_rows.new_empty(T, H, Dk, dtype=torch.float32)
    for h in range(H):
        order = torch.argsort(row_query[h].long(), stable=True)                # rows of query 0 first, ...
        by_query = dq_rows[h].index_select(0, order)                           # [R, Dk], R = T * copies
        dq[:, h] = by_query.view(T, R // T, Dk).sum(1, dtype=torch.float32)
    return dq


def triton_moba_attention(q, k, v, cu_seqlens, block_size: int, top_k: int, scale: float):
    """q, k [1, T, H, Dk]; v [1, T, H, Dv] -> o [1, T, H, Dv]: the gate, the row attention, the merge."""
    from .flex import PermuteRows, _merge
    from .gate import block_means, choose_blocks, packed_blocks
    block, first, num_blocks = packed_blocks(cu_seqlens, block_size)                  # [T], [T]
    means = block_means(k[0].detach(), block, num_blocks)                             # [G, H, Dk]
    chosen = choose_blocks(q[0].detach(), means, block, first, top_k)                 # [T, H, slots]
    T, H, slots = chosen.shape
    own = block[:, None, None].expand(T, H, 1)
    row_of = torch.cat([own, chosen], dim=2)                                           # [T, H, 1 + slots]
    copies = 1 + slots
    picks = row_of.permute(1, 0, 2).reshape(H, T * copies)                             # [H, R], -1 empty
    picks = torch.where(picks >= 0, picks, num_blocks)
    order = torch.argsort(picks, dim=1, stable=True)                                   # rows by block
    row_block = picks.gather(1, order).to(torch.int32)                                 # [H, R]
    row_query = (order // copies).to(torch.int32)                                      # [H, R]
    ids = torch.arange(num_blocks + 1, device=q.device)
    block_start = torch.searchsorted(block, ids).to(torch.int32)                       # [G + 1]
    max_block = int((block_start[1:] - block_start[:-1]).max()) if num_blocks else 1
    o_rows, lse_rows = RowAttention.apply(q[0], k[0], v[0], row_query, row_block, block_start, max_block, scale)
    unsort = torch.argsort(order, dim=1)                                               # sorted row -> (t, slot)
    # back to (query, slot) order; PermuteRows' backward gathers (torch.gather's would scatter-add)
    o_all = PermuteRows.apply(o_rows, unsort, order).view(H, T, copies, -1)              # [H, T, 1 + slots, Dv]
    lse_all = PermuteRows.apply(lse_rows[..., None], unsort, order).view(H, T, copies)
    o = _merge(o_all[None, :, :, 0], lse_all[None, :, :, 0], o_all[None, :, :, 1:], lse_all[None, :, :, 1:])
    return o[0].transpose(0, 1)[None]                                                  # [1, T, H, Dv]
