"""Chunkwise KDA forward in Triton: six kernels (the math is in chunk_torch.py's docstring).

1. Everything that needs no state, in three kernels:
   `_fwd_gate_kernel` (chunk, head): the gate (optionally -exp(A_log) * softplus(x + dt_bias)), its
   chunk-local cumulative sum G, the optional L2 norm of q/k;
   `_fwd_diag_kernel` (token, head block) and `_fwd_solve_kernel` (chunk, head): the intra-chunk
   matrices Akk (strictly lower, times beta) and Aqk (lower, times scale) as 16 x 16 blocks with
   exact decays: the diagonal blocks row by row in the first (elementwise, float32), the six left of
   the diagonal in the second (dots summed over channel blocks), which then forms T = (I + Akk)^-1 by
   blockwise forward substitution (of Akk, only the diagonal blocks go through memory).
2. `_fwd_wy_kernel`, one program per (chunk, head): the WY factors w = T (beta k exp(G)) and
   u = T (beta v) as 64 x 64 products over column blocks, and the pre-decayed qg = scale q exp(G) and
   kg = k exp(G_last - G) in the input dtype, so the sequential pass and the output read one
   half-precision tile instead of k or q plus an fp32 G tile and its exponentials.
3. `_fwd_state_kernel`, one program per (sequence, head, V-block): the sequential pass over the
   sequence's chunks; stores the state h entering each chunk and the corrected values
   v_new = u - w h.  S_next = exp(G_last) * S + kg^T v_new.
4. `_fwd_output_kernel`, one program per (chunk, head, V-block): o = qg h + Aqk v_new.

Precision (benchmarks/kda_precision.py): the key path (w, qg, kg and the dots w S, kg^T v_new, qg h)
and the stored per-chunk states h run in the input dtype; the value path (u, v_new, Aqk) and the
running state stay float32.
Launch configurations are autotuned (triton_utils.autotune).

All tensors are on a packed token axis (a dense batch is B sequences of T tokens).
"""
import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .triton_blocks import (chunk_span, ld_halves, ld_row_at, ld_rows, off_diag_blocks,
                            softplus, st_cc, st_halves, st_rows, unit_lower_inverse)
from .triton_utils import CHUNK, autotune, config, dot_dtype, dot_precision, next_pow2, size_bucket, state_dtype


@triton.jit
def _fwd_gate_kernel(
    q, k, g,                          # inputs, token-major [NTOK, H, K]
    qn, kn, G,                        # out: L2-normalised q, k (when USE_L2NORM); G [NTOK, H, K] f32
    A_log, dt_bias,
    cu_seqlens, chunk_seq, chunk_pos,
    H, K: tl.constexpr, BK: tl.constexpr,
    USE_L2NORM: tl.constexpr, USE_GATE: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
):
    """Per (chunk, head), 16 rows at a time: the gate (optionally -exp(A_log) * softplus(x + dt_bias)),
    its chunk-local cumulative sum G, and the optional L2 norm of q and k."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0, L = chunk_span(cu_seqlens, chunk_seq, chunk_pos, i_c)
    r16 = tl.arange(0, 16)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    if USE_GATE:
        a = -tl.exp(tl.load(A_log + i_h).to(tl.float32))
        bias = tl.zeros([BK], dtype=tl.float32)
        if HAS_DT_BIAS:
            bias = tl.load(dt_bias + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    carry = tl.zeros([BK], dtype=tl.float32)
    for I in tl.static_range(4):
        b_g = ld_rows(g, t0, I * 16, L, i_h, H, K, BK)
        if USE_GATE:
            x = b_g + bias[None, :]
            m = ((I * 16 + r16) < L)[:, None] & m_k[None, :]
            b_g = tl.where(m, a * softplus(x), 0.)
        b_G = tl.cumsum(b_g, axis=0) + carry[None, :]
        carry += tl.sum(b_g, axis=0)
        st_rows(G, b_G, t0, I * 16, L, i_h, H, K, BK)
        if USE_L2NORM:
            b_q = ld_rows(q, t0, I * 16, L, i_h, H, K, BK)
            b_k = ld_rows(k, t0, I * 16, L, i_h, H, K, BK)
            b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q, axis=1) + 1e-6)[:, None]
            b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k, axis=1) + 1e-6)[:, None]
            st_rows(qn, b_q, t0, I * 16, L, i_h, H, K, BK)
            st_rows(kn, b_k, t0, I * 16, L, i_h, H, K, BK)


@autotune([config(4, 1, BH=8), config(1, 1, BH=2), config(2, 1, BH=4), config(2, 1, BH=8),
           config(4, 1, BH=16)], key=["H", "K"])
@triton.jit
def _fwd_diag_kernel(
    qs, ks, G, beta,                  # qs, ks [NTOK, H, K] (normalised if so); G f32; beta [NTOK, H]
    Akk_d, Aqk,                       # out: Akk_d [NTOK, H, 16] f32 (the diagonal blocks); Aqk [NTOK, H, 64] f32
    cu_seqlens, chunk_seq, chunk_pos,
    scale,
    H, K: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr,
):
    """Per (token r of a chunk, block of BH heads): row r of the chunk's diagonal 16 x 16 blocks of
    Akk (strictly lower, times beta) and Aqk (lower, times scale), one earlier token j of r's block at
    a time, with the exact decay e^(G_r - G_j) <= 1 in float32 (no dot: a row against at most 16
    rows), and Aqk's zeros right of the block; the blocks left of the diagonal are `_fwd_solve_kernel`'s."""
    i_cr, i_hb = tl.program_id(0), tl.program_id(1)
    i_c, r = i_cr // 64, i_cr % 64
    t0, L = chunk_span(cu_seqlens, chunk_seq, chunk_pos, i_c)
    if r < L:
        o_h = i_hb * BH + tl.arange(0, BH)
        o_k = tl.arange(0, BK)
        m_h = o_h < H
        m_hk = m_h[:, None] & (o_k < K)[None, :]
        row_r = ((t0 + r) * H + o_h).to(tl.int64)                                  # [BH] (token, head) rows
        p_r = row_r[:, None] * K + o_k[None, :]                                   # [BH, BK]
        q_r = tl.load(qs + p_r, mask=m_hk, other=0.).to(tl.float32)
        k_r = tl.load(ks + p_r, mask=m_hk, other=0.).to(tl.float32)
        G_r = tl.load(G + p_r, mask=m_hk, other=0.)
        rs = (r // 16) * 16                                                       # r's block starts here
        col = tl.arange(0, 16)
        a_kk = tl.zeros([BH, 16], dtype=tl.float32)
        a_qk = tl.zeros([BH, 16], dtype=tl.float32)
        for j in range(rs, r + 1):
            p_j = ((t0 + j) * H + o_h).to(tl.int64)[:, None] * K + o_k[None, :]
            k_j = tl.load(ks + p_j, mask=m_hk, other=0.).to(tl.float32) \
                * tl.exp(G_r - tl.load(G + p_j, mask=m_hk, other=0.))           # k_j e^(G_r - G_j)
            at_j = (col == j - rs)[None, :]
            a_kk = tl.where(at_j, tl.sum(k_r * k_j, axis=1)[:, None], a_kk)
            a_qk = tl.where(at_j, tl.sum(q_r * k_j, axis=1)[:, None], a_qk)
        b_r = tl.load(beta + row_r, mask=m_h, other=0.).to(tl.float32)
        a_kk = tl.where((col < r - rs)[None, :], a_kk * b_r[:, None], 0.)          # strictly lower
        tl.store(Akk_d + row_r[:, None] * 16 + col[None, :], a_kk, mask=m_h[:, None])
        tl.store(Aqk + row_r[:, None] * 64 + rs + col[None, :], a_qk * scale, mask=m_h[:, None])
        right = tl.arange(0, 64)
        tl.store(Aqk + row_r[:, None] * 64 + right[None, :], tl.zeros([BH, 64], dtype=tl.float32),
                 mask=m_h[:, None] & (right >= rs + 16)[None, :])


@autotune([config(2, 2, BC=32), config(2, 3, BC=32), config(2, 2, BC=16), config(4, 2, BC=32)],
          key=["H", "K"])
@triton.jit
def _fwd_solve_kernel(
    qs, ks, G, beta, Akk_d,           # Akk_d [NTOK, H, 16] f32: the diagonal blocks of Akk (beta-scaled)
    Aqk, Tm,                          # out: Aqk's blocks left of the diagonal; T [NTOK, H, 64] f32
    cu_seqlens, chunk_seq, chunk_pos,
    scale,
    H, K: tl.constexpr, BC: tl.constexpr, PREC: tl.constexpr,
):
    """Per (chunk, head): the six 16 x 16 blocks left of the diagonal of Akk and Aqk (`off_diag_blocks`),
    then T = (I + Akk)^-1 (`unit_lower_inverse`) with Akk's diagonal blocks from `_fwd_diag_kernel`,
    the only part of Akk that goes through memory."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0, L = chunk_span(cu_seqlens, chunk_seq, chunk_pos, i_c)
    A10, A20, A21, A30, A31, A32, P10, P20, P21, P30, P31, P32 = off_diag_blocks(
        qs, ks, G, t0, L, i_h, H, K, BC, PREC)
    r16 = tl.arange(0, 16)
    b1 = tl.load(beta + (t0 + 16 + r16) * H + i_h, mask=16 + r16 < L, other=0.).to(tl.float32)[:, None]
    b2 = tl.load(beta + (t0 + 32 + r16) * H + i_h, mask=32 + r16 < L, other=0.).to(tl.float32)[:, None]
    b3 = tl.load(beta + (t0 + 48 + r16) * H + i_h, mask=48 + r16 < L, other=0.).to(tl.float32)[:, None]
    st_cc(Aqk, P10 * scale, t0, 16, 0, L, i_h, H, 64)
    st_cc(Aqk, P20 * scale, t0, 32, 0, L, i_h, H, 64)
    st_cc(Aqk, P21 * scale, t0, 32, 16, L, i_h, H, 64)
    st_cc(Aqk, P30 * scale, t0, 48, 0, L, i_h, H, 64)
    st_cc(Aqk, P31 * scale, t0, 48, 16, L, i_h, H, 64)
    st_cc(Aqk, P32 * scale, t0, 48, 32, L, i_h, H, 64)
    T00, T10, T11, T20, T21, T22, T30, T31, T32, T33 = unit_lower_inverse(
        Akk_d, t0, L, i_h, H, A10 * b1, A20 * b2, A21 * b2, A30 * b3, A31 * b3, A32 * b3, PREC)
    zero = tl.zeros([16, 16], dtype=tl.float32)
    st_cc(Tm, T00, t0, 0, 0, L, i_h, H, 64)
    st_cc(Tm, zero, t0, 0, 16, L, i_h, H, 64)
    st_cc(Tm, zero, t0, 0, 32, L, i_h, H, 64)
    st_cc(Tm, zero, t0, 0, 48, L, i_h, H, 64)
    st_cc(Tm, T10, t0, 16, 0, L, i_h, H, 64)
    st_cc(Tm, T11, t0, 16, 16, L, i_h, H, 64)
    st_cc(Tm, zero, t0, 16, 32, L, i_h, H, 64)
    st_cc(Tm, zero, t0, 16, 48, L, i_h, H, 64)
    st_cc(Tm, T20, t0, 32, 0, L, i_h, H, 64)
    st_cc(Tm, T21, t0, 32, 16, L, i_h, H, 64)
    st_cc(Tm, T22, t0, 32, 32, L, i_h, H, 64)
    st_cc(Tm, zero, t0, 32, 48, L, i_h, H, 64)
    st_cc(Tm, T30, t0, 48, 0, L, i_h, H, 64)
    st_cc(Tm, T31, t0, 48, 16, L, i_h, H, 64)
    st_cc(Tm, T32, t0, 48, 32, L, i_h, H, 64)
    st_cc(Tm, T33, t0, 48, 48, L, i_h, H, 64)


@triton.jit
def _ld_chunk(base, t0, L, i_h, H, D: tl.constexpr, o_d, m_d):
    """[64, len(o_d)] float32 tile of the chunk's rows, columns o_d (mask m_d), zero past L."""
    return _ld_tile(base, t0, L, i_h, H, D, o_d, m_d).to(tl.float32)


@triton.jit
def _ld_tile(base, t0, L, i_h, H, D: tl.constexpr, o_d, m_d):
    """Like _ld_chunk, in the tensor's own dtype (an operand of a dot)."""
    rows = tl.arange(0, 64)
    p = base + ((t0 + rows) * H + i_h).to(tl.int64)[:, None] * D + o_d[None, :]
    return tl.load(p, mask=(rows < L)[:, None] & m_d[None, :], other=0.)


def tile_desc(x):
    """A TMA descriptor of a token-major [1, NTOK, H, D] tensor seen as [NTOK, H * D], for [64 tokens,
    64 channels] tiles of one head (`_ld_desc`); tokens past NTOK read as zero. Needs D * itemsize to be
    a multiple of 16 bytes (checked in triton_autograd)."""
    _, NTOK, H, D = x.shape
    return TensorDescriptor(x.view(NTOK, H * D), [NTOK, H * D], [H * D, 1], [64, 64])


@triton.jit
def _ld_desc(desc, t0, i_h, c0, D: tl.constexpr):
    """[64, 64] tile (tokens t0.., channels c0..) of head i_h through a TMA descriptor (`tile_desc`).
    In the sequential state loops Triton pipelines these copies across iterations and feeds the tiles
    to the dots from shared memory; the same tiles through pointer loads went through registers, one
    iteration at a time. Unlike the masked pointer loads, rows past the sequence's end hold the next
    sequence's tokens (the caller multiplies them by zeros); channels past D, the next head's, are
    zeroed here."""
    tile = desc.load([t0.to(tl.int32), i_h * D + c0])
    if D % 64 != 0:
        tile = tl.where((c0 + tl.arange(0, 64) < D)[None, :], tile, 0.)
    return tile


@triton.jit
def _st_chunk(base, x, t0, L, i_h, H, D: tl.constexpr, o_d, m_d):
    rows = tl.arange(0, 64)
    p = base + ((t0 + rows) * H + i_h).to(tl.int64)[:, None] * D + o_d[None, :]
    tl.store(p, x.to(base.dtype.element_ty), mask=(rows < L)[:, None] & m_d[None, :])


@autotune([config(4, 2, BC=32), config(4, 3, BC=32), config(4, 4, BC=32), config(8, 1, BC=32)],
          key=["H", "K", "V"])
@triton.jit
def _fwd_wy_kernel(
    qs, ks, v, beta, G, Tm,           # qs, ks [NTOK,H,K] (L2-normalised if so); v [NTOK,H,V]; G f32; T [NTOK,H,64]
    w, u, qg, kg,                     # out: w, qg, kg [NTOK,H,K] input dtype; u [NTOK,H,V] f32
    cu_seqlens, chunk_seq, chunk_pos,
    scale,
    H, K: tl.constexpr, V: tl.constexpr, BC: tl.constexpr,
    PREC: tl.constexpr, DOT: tl.constexpr,
):
    """Per (chunk, head): the WY factors w = T (beta k e^G) and u = T (beta v) as [64, 64] x [64, BC]
    products over column blocks, and the pre-decayed qg = scale q e^G, kg = k e^(G_last - G)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0, L = chunk_span(cu_seqlens, chunk_seq, chunk_pos, i_c)
    rows = tl.arange(0, 64)
    m_r = (rows < L)[:, None]
    o_c = tl.arange(0, 64)
    b_T = _ld_chunk(Tm, t0, L, i_h, H, 64, o_c, o_c < 64)                      # [64, 64]
    b_beta = tl.load(beta + (t0 + rows) * H + i_h, mask=rows < L, other=0.).to(tl.float32)
    for c0 in range(0, K, BC):
        o_d = c0 + tl.arange(0, BC)
        m_d = o_d < K
        b_G = _ld_chunk(G, t0, L, i_h, H, K, o_d, m_d)                          # [64, BC]
        G_last = ld_row_at(G, t0, L - 1, L, i_h, H, K, c0, BC)                   # [BC]
        b_k = _ld_chunk(ks, t0, L, i_h, H, K, o_d, m_d)
        e = tl.where(m_r, tl.exp(b_G), 0.)
        b_X = (b_k * e * b_beta[:, None]).to(DOT)                                 # beta k e^G
        _st_chunk(w, tl.dot(b_T.to(DOT), b_X, input_precision=PREC), t0, L, i_h, H, K, o_d, m_d)
        _st_chunk(kg, b_k * tl.where(m_r, tl.exp(G_last[None, :] - b_G), 0.), t0, L, i_h, H, K, o_d, m_d)
        _st_chunk(qg, _ld_chunk(qs, t0, L, i_h, H, K, o_d, m_d) * e * scale, t0, L, i_h, H, K, o_d, m_d)
    for c0 in range(0, V, BC):
        o_d = c0 + tl.arange(0, BC)
        m_d = o_d < V
        b_Y = _ld_chunk(v, t0, L, i_h, H, V, o_d, m_d) * b_beta[:, None]          # beta v, value path fp32
        _st_chunk(u, tl.dot(b_T, b_Y, input_precision=PREC), t0, L, i_h, H, V, o_d, m_d)


@triton.jit
def _fwd_state_inputs(u, G, bos, eos, i, i_h, H, K: tl.constexpr, V: tl.constexpr, o_v, m_v):
    """Chunk i's pointer-loaded inputs of `_fwd_state_kernel`: u [64, BV] f32 (zero past the sequence's
    end) and the two halves of G's last row (the chunk's decay)."""
    t0 = bos + i * 64
    L = tl.minimum(eos - t0, 64).to(tl.int32)
    b_u = _ld_chunk(u, t0, L, i_h, H, V, o_v, m_v)
    G_a = ld_row_at(G, t0, L - 1, L, i_h, H, K, 0, 64)
    G_b = ld_row_at(G, t0, L - 1, L, i_h, H, K, 64, 64)
    return b_u, G_a, G_b


@autotune([config(8, 2, BV=32), config(8, 3, BV=32), config(4, 2, BV=16), config(8, 4, BV=32),
           config(8, 2, BV=64), config(4, 3, BV=16)], key=["H", "K", "V", "NH_BUCKET"])
@triton.jit
def _fwd_state_kernel(
    kg, w, u, G,                      # kg, w: tile_desc of [NTOK, H, K] (input dtype); u [NTOK, H, V] f32; G f32
    h, v_new, h0, ht,                 # h [NC, H, K, V] (state_dtype); v_new [NTOK, H, V]; h0, ht [N, H, K, V] f32
    cu_seqlens, chunk_offsets,
    H, NH_BUCKET, K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, PREC: tl.constexpr, DOT: tl.constexpr,
):
    """The state as two [64, BV] halves of K (K <= 128; the second is empty when K <= 64): smaller
    tiles per dot and per live value than one [128, BV] block."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    n_chunks = tl.cdiv(eos - bos, 64)
    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    o_a = tl.arange(0, 64)
    o_b = 64 + tl.arange(0, 64)
    o_v = i_v * BV + tl.arange(0, BV)
    m_a, m_b, m_v = o_a < K, o_b < K, o_v < V
    p_a, p_b = o_a[:, None] * V + o_v[None, :], o_b[:, None] * V + o_v[None, :]
    m_av, m_bv = m_a[:, None] & m_v[None, :], m_b[:, None] & m_v[None, :]

    rows = tl.arange(0, 64)
    S_a = tl.zeros([64, BV], dtype=tl.float32)                                  # state entering the chunk
    S_b = tl.zeros([64, BV], dtype=tl.float32)
    if HAS_H0:
        S_a, S_b = ld_halves(h0 + (i_n * H + i_h) * K * V, p_a, p_b, m_av, m_bv, K)
    # u and G's last row are loaded one step ahead (the TMA tiles are pipelined by Triton): each step is
    # a chain of dependent dots, and a load waited for inside it stalls the whole step
    b_u, G_a, G_b = _fwd_state_inputs(u, G, bos, eos, 0, i_h, H, K, V, o_v, m_v)
    for i in range(0, n_chunks):
        t0 = bos + i * 64
        L = tl.minimum(eos - t0, 64).to(tl.int32)
        nxt = _fwd_state_inputs(u, G, bos, eos, tl.minimum(i + 1, n_chunks - 1), i_h, H, K, V, o_v, m_v)
        # each half stored just before its dot (storing both first raises spills on sm_90)
        p_h = h + ((c0 + i) * H + i_h) * K * V
        tl.store(p_h + p_a, S_a.to(h.dtype.element_ty), mask=m_av)
        # dot operands in DOT (bf16 for bf16 inputs); u, v_new and S stay float32
        b_vn = b_u - tl.dot(_ld_desc(w, t0, i_h, 0, K).to(DOT), S_a.to(DOT), input_precision=PREC)   # [64, BV]
        if K > 64:
            tl.store(p_h + p_b, S_b.to(h.dtype.element_ty), mask=m_bv)
            b_vn -= tl.dot(_ld_desc(w, t0, i_h, 64, K).to(DOT), S_b.to(DOT), input_precision=PREC)
        b_vn = tl.where((rows < L)[:, None], b_vn, 0.)                           # (w past L: next sequence)
        _st_chunk(v_new, b_vn, t0, L, i_h, H, V, o_v, m_v)
        b_vn = b_vn.to(DOT)
        b_kg = _ld_desc(kg, t0, i_h, 0, K).to(DOT)                                 # [64 tokens, 64]
        S_a = S_a * tl.exp(G_a)[:, None] + tl.dot(tl.trans(b_kg), b_vn, input_precision=PREC)
        if K > 64:
            b_kg = _ld_desc(kg, t0, i_h, 64, K).to(DOT)
            S_b = S_b * tl.exp(G_b)[:, None] + tl.dot(tl.trans(b_kg), b_vn, input_precision=PREC)
        b_u, G_a, G_b = nxt
    if STORE_HT:
        st_halves(ht + (i_n * H + i_h) * K * V, S_a, S_b, p_a, p_b, m_av, m_bv, K)


@autotune([config(8, 2, BV=64), config(4, 1, BV=64), config(4, 2, BV=64), config(4, 2, BV=32),
           config(8, 2, BV=128)], key=["H", "K", "V"])
@triton.jit
def _fwd_output_kernel(
    qg, h, v_new, Aqk, o,             # qg [NTOK,H,K]; h [NC,H,K,V]; v_new, o [NTOK,H,V]; Aqk [NTOK,H,64]
    cu_seqlens, chunk_seq, chunk_pos,
    H, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr, DOT: tl.constexpr,
):
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, L = chunk_span(cu_seqlens, chunk_seq, chunk_pos, i_c)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_c = tl.arange(0, 64)
    m_k, m_v = o_k < K, o_v < V

    b_qg = _ld_tile(qg, t0, L, i_h, H, K, o_k, m_k).to(DOT)                     # [64, BK]
    b_h = tl.load(h + (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
                  mask=m_k[:, None] & m_v[None, :], other=0.).to(DOT)
    b_A = _ld_chunk(Aqk, t0, L, i_h, H, 64, o_c, o_c < 64)
    b_vn = _ld_chunk(v_new, t0, L, i_h, H, V, o_v, m_v)
    b_o = tl.dot(b_qg, b_h, input_precision=PREC) + tl.dot(b_A, b_vn, input_precision=PREC)
    _st_chunk(o, b_o, t0, L, i_h, H, V, o_v, m_v)


def chunk_kda_fwd(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, table,
                  use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, A_log=None, dt_bias=None):
    """Forward on a packed token axis. q, k, g: [1, NTOK, H, K]; v: [1, NTOK, H, V]; beta [1, NTOK, H].

    `table` = triton_utils.chunk_table(cu_seqlens). Returns (o, final_state, saved) where saved
    holds what the backward needs (G, qn, kn, w, Aqk, T, h, v_new, qg, kg)."""
    _, NTOK, H, K = q.shape
    V = v.shape[-1]
    N = cu_seqlens.numel() - 1
    chunk_seq, chunk_pos, chunk_offsets, NC = table
    BK = next_pow2(K)
    prec = dot_precision(q.dtype)
    f32 = dict(device=q.device, dtype=torch.float32)
    dummy = torch.empty(1, **f32)

    G = torch.empty(1, NTOK, H, K, **f32)
    qn = torch.empty_like(q) if use_qk_l2norm_in_kernel else q
    kn = torch.empty_like(k) if use_qk_l2norm_in_kernel else k
    w = torch.empty(1, NTOK, H, K, device=q.device, dtype=q.dtype)        # key path: input dtype
    qg = torch.empty_like(w)
    kg = torch.empty_like(w)
    u = torch.empty(1, NTOK, H, V, **f32)
    Aqk = torch.empty(1, NTOK, H, CHUNK, **f32)
    Tm = torch.empty(1, NTOK, H, CHUNK, **f32)
    _fwd_gate_kernel[(NC, H)](
        q, k, g, qn, kn, G,
        A_log if A_log is not None else dummy, dt_bias if dt_bias is not None else dummy,
        cu_seqlens, chunk_seq, chunk_pos,
        H=H, K=K, BK=BK, USE_L2NORM=use_qk_l2norm_in_kernel, USE_GATE=use_gate_in_kernel,
        HAS_DT_BIAS=dt_bias is not None, num_warps=4, num_stages=1,
    )
    Akk_d = torch.empty(1, NTOK, H, 16, **f32)
    _fwd_diag_kernel[lambda meta: (NC * CHUNK, triton.cdiv(H, meta["BH"]))](
        qn, kn, G, beta, Akk_d, Aqk, cu_seqlens, chunk_seq, chunk_pos, scale, H=H, K=K, BK=BK,
    )
    _fwd_solve_kernel[(NC, H)](
        qn, kn, G, beta, Akk_d, Aqk, Tm, cu_seqlens, chunk_seq, chunk_pos, scale, H=H, K=K, PREC=prec,
    )
    del Akk_d
    _fwd_wy_kernel[(NC, H)](
        qn, kn, v, beta, G, Tm, w, u, qg, kg, cu_seqlens, chunk_seq, chunk_pos, scale,
        H=H, K=K, V=V, PREC=prec, DOT=dot_dtype(q.dtype),
    )

    h = torch.empty(NC, H, K, V, device=q.device, dtype=state_dtype(q.dtype))
    v_new = torch.empty(1, NTOK, H, V, **f32)
    # one compiled variant: a missing initial state is read as zeros, the final state always stored
    h0 = initial_state if initial_state is not None else torch.zeros(N, H, K, V, **f32)
    ht = torch.empty(N, H, K, V, **f32)
    _fwd_state_kernel[lambda meta: (triton.cdiv(V, meta["BV"]), N * H)](
        tile_desc(kg), tile_desc(w), u, G, h, v_new, h0, ht,
        cu_seqlens, chunk_offsets,
        H=H, NH_BUCKET=size_bucket(N * H), K=K, V=V,
        HAS_H0=True, STORE_HT=True, PREC=prec, DOT=dot_dtype(q.dtype),
    )
    ht = ht if output_final_state else None

    o = torch.empty_like(v)
    _fwd_output_kernel[lambda meta: (triton.cdiv(V, meta["BV"]), NC, H)](
        qg, h, v_new, Aqk, o, cu_seqlens, chunk_seq, chunk_pos,
        H=H, K=K, V=V, BK=BK, PREC=prec, DOT=dot_dtype(q.dtype),
    )
    saved = dict(G=G, qn=qn, kn=kn, w=w, Aqk=Aqk, T=Tm, h=h, v_new=v_new, qg=qg, kg=kg)
    return o, ht, saved
