"""Chunkwise KDA backward in Triton: five stages, reading what the forward saved.

Per chunk (one head), with h the state entering the chunk, dh the gradient of the state leaving it,
T = (I + Akk)^-1, X = beta k exp(G), Y = beta v, qg = scale q exp(G), kg = k exp(G_last - G):

    forward:   v_new = T Y - (T X) h,  o = qg h + Aqk v_new,  S_next = exp(G_last) h + kg^T v_new

1. `_bwd_dv_local_kernel` (V-block, chunk, head): dv_local = Aqk^T do, every chunk in parallel; then
   `_bwd_state_kernel` (sequence, head, V-block), reverse over chunks, on the forward's pre-decayed
   qg and kg, adds the state part (into a new tensor: tuning reruns a kernel on its real arguments):
       dv_new = Aqk^T do + kg dh            dh_prev = exp(G_last) dh + qg^T do - (T X)^T dv_new
   stores dh per chunk, dv_new, and the initial-state gradient.
2. Everything that contracts over V, in two kernels:
   `_bwd_inter_key_kernel` (chunk, head, channel block of K), a pass over V for the key side,
       dqg = do h^T, d(TX) = -dv_new h^T, dkg = v_new dh^T, dX = T^T d(TX) (-> dk, dbeta, dG),
   the decay terms of qg, kg and exp(G_last), and the block's share d(TX) X^T of dT;
   `_bwd_inter_value_kernel` (chunk, head), a pass over V for the value side,
       dAqk = do v_new^T, dY = T^T dv_new (-> dv, dbeta), dT = dv_new Y^T + the key blocks' shares,
   then dAkk = -T^T dT T^T (strictly lower). Together they write dAkk, dP = scale * dAqk and the
   inter parts of dq, dk, dbeta, dG. One kernel per (chunk, head) did both before: 4 channel-block
   passes in sequence per program, one program per SM (255 registers on sm_90).
3. `_bwd_intra_kernel` (16-row block of a chunk, head, channel block), with the same exact decays as
   the forward: the gradients of Akk[i, j] = beta_i sum_c k_i k_j exp(G_i - G_j) and Aqk through dAkk
   and dP, for one row block's dq, dk and dG (its rows against earlier blocks, its columns against
   later ones, the diagonal block token by token); all per channel and per row, so every row block
   and channel block is its own program, and dbeta (a sum over channels) comes out as per-block
   partials.
4. `_bwd_dg_kernel` (chunk, head, channel block): the reverse cumulative sum dG -> dg inside the
   chunk and optionally the gate (-exp(A_log) softplus(x + dt_bias)) backward.
5. with the in-kernel L2 norm, `_bwd_l2norm_kernel` (chunk, head): the norm's backward on whole rows.
"""
import torch
import triton
import triton.language as tl

from .triton_blocks import (chunk_span, ld_cc, ld_halves, ld_row_at, ld_rows, ld_rows_at, softplus,
                            st_halves, st_rows)
from .triton_chunk_fwd import _ld_chunk, _ld_desc, _ld_tile, _st_chunk, tile_desc
from .triton_utils import CHUNK, autotune, config, dot_dtype, dot_precision, next_pow2, size_bucket, state_dtype

BC_MIN = 16          # the smallest channel block among `_bwd_intra_kernel`'s candidates
INTER_BC = 32        # the channel block of `_bwd_inter_key_kernel` (fixed: it sizes the dT partials)


@autotune([config(4, 1, BV=64), config(8, 2, BV=64), config(4, 2, BV=32)], key=["H", "V"])
@triton.jit
def _bwd_dv_local_kernel(
    Aqk, do, dv_local,                # Aqk [NTOK,H,64] f32; do [NTOK,H,V]; out dv_local [NTOK,H,V] f32
    cu_seqlens, chunk_seq, chunk_pos,
    H, V: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, DOT: tl.constexpr,
):
    """The state-free part of dv_new, Aqk^T do, for every chunk in parallel: the reverse state pass
    then only adds kg dh (one dot less and no Aqk tile in its sequential loop)."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, L = chunk_span(cu_seqlens, chunk_seq, chunk_pos, i_c)
    o_c = tl.arange(0, 64)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    b_A = _ld_chunk(Aqk, t0, L, i_h, H, 64, o_c, o_c < 64).to(DOT)            # [64, 64]
    b_do = _ld_tile(do, t0, L, i_h, H, V, o_v, m_v).to(DOT)                    # [64, BV]
    _st_chunk(dv_local, tl.dot(tl.trans(b_A), b_do, input_precision=PREC), t0, L, i_h, H, V, o_v, m_v)


@triton.jit
def _bwd_state_inputs(dv_local, do, G, bos, eos, i, i_h, H, K: tl.constexpr, V: tl.constexpr, o_v, m_v,
                      DOT: tl.constexpr):
    """Chunk i's pointer-loaded inputs of `_bwd_state_kernel`: dv_local [64, BV] f32, do [64, BV] (zero
    past the sequence's end) and the two halves of G's last row (the chunk's decay)."""
    t0 = bos + i * 64
    L = tl.minimum(eos - t0, 64).to(tl.int32)
    b_dvl = _ld_chunk(dv_local, t0, L, i_h, H, V, o_v, m_v)
    b_do = _ld_tile(do, t0, L, i_h, H, V, o_v, m_v).to(DOT)
    G_a = ld_row_at(G, t0, L - 1, L, i_h, H, K, 0, 64)
    G_b = ld_row_at(G, t0, L - 1, L, i_h, H, K, 64, 64)
    return b_dvl, b_do, G_a, G_b


# BV 32 spills on sm_90 with 4 warps (kda_static.py) but reads the key-side tiles (kg, qg, w) half as
# often as BV 16 (each V block of a head reads them again): the autotuner picks it at the packed batch
# of 64 x 16 sequence-heads (its own timings, H200: 0.54 vs 0.76 ms). One 8-warp candidate: before the
# key tiles came through TMA descriptors, tuning faulted at the first launch of an 8-warp candidate on
# an H200 (Triton 3.6); with them, both 8-warp BV 32 candidates ran clean, each in a process of its own
# and under the autotuner, and 3 stages won at H = 32 (154 vs 162 us; 2 stages won nowhere).
@autotune([config(4, 2, BV=16), config(4, 3, BV=16), config(4, 4, BV=16), config(4, 2, BV=32),
           config(4, 3, BV=32), config(8, 3, BV=32)], key=["H", "K", "V", "NH_BUCKET"])
@triton.jit
def _bwd_state_kernel(
    qg, kg, w, G, do,                 # qg, kg, w: tile_desc of the forward's [NTOK,H,K]; G f32; do [NTOK,H,V]
    dv_local, dh, dv_new, dht, dh0,   # dv_local = Aqk^T do [NTOK,H,V] f32; out dh [NC,H,K,V] (state_dtype), dv_new = dv_local + kg dh
    cu_seqlens, chunk_offsets,
    H, NH_BUCKET, K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr,
    HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, PREC: tl.constexpr, DOT: tl.constexpr,
):
    """The state gradient as two [64, BV] halves of K (K <= 128), as in the forward state pass."""
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
    dS_a = tl.zeros([64, BV], dtype=tl.float32)                  # gradient of the state leaving the chunk
    dS_b = tl.zeros([64, BV], dtype=tl.float32)
    if HAS_DHT:
        dS_a, dS_b = ld_halves(dht + (i_n * H + i_h) * K * V, p_a, p_b, m_av, m_bv, K)
    # the pointer loads of a chunk are issued one step ahead (the TMA tiles are pipelined by Triton):
    # each step is a chain of dependent dots, and a load waited for inside it stalls the whole step
    last = tl.maximum(n_chunks - 1, 0)                                # (an empty sequence loads nothing)
    b_dvl, b_do, G_a, G_b = _bwd_state_inputs(dv_local, do, G, bos, eos, last, i_h, H, K, V, o_v, m_v, DOT)
    for j in range(0, n_chunks):
        i = n_chunks - 1 - j
        t0 = bos + i * 64
        L = tl.minimum(eos - t0, 64).to(tl.int32)
        nxt = _bwd_state_inputs(dv_local, do, G, bos, eos, tl.maximum(i - 1, 0), i_h, H, K, V, o_v, m_v, DOT)
        # each half stored just before its dot (storing both first raises spills on sm_90)
        p_dh = dh + ((c0 + i) * H + i_h) * K * V
        tl.store(p_dh + p_a, dS_a.to(dh.dtype.element_ty), mask=m_av)
        # key-path operands in DOT (bf16 for bf16 inputs), as in the forward; dv_new stays fp32
        b_dvn = b_dvl + tl.dot(_ld_desc(kg, t0, i_h, 0, K).to(DOT), dS_a.to(DOT), input_precision=PREC)
        if K > 64:
            tl.store(p_dh + p_b, dS_b.to(dh.dtype.element_ty), mask=m_bv)
            b_dvn += tl.dot(_ld_desc(kg, t0, i_h, 64, K).to(DOT), dS_b.to(DOT), input_precision=PREC)
        b_dvn = tl.where((rows < L)[:, None], b_dvn, 0.)                       # (kg past L: next sequence)
        _st_chunk(dv_new, b_dvn, t0, L, i_h, H, V, o_v, m_v)
        b_dvn = b_dvn.to(DOT)
        b_qg = _ld_desc(qg, t0, i_h, 0, K).to(DOT)                              # scale q exp(G)
        b_w = _ld_desc(w, t0, i_h, 0, K).to(DOT)
        dS_a = (dS_a * tl.exp(G_a)[:, None] + tl.dot(tl.trans(b_qg), b_do, input_precision=PREC)
                - tl.dot(tl.trans(b_w), b_dvn, input_precision=PREC))
        if K > 64:
            b_qg = _ld_desc(qg, t0, i_h, 64, K).to(DOT)
            b_w = _ld_desc(w, t0, i_h, 64, K).to(DOT)
            dS_b = (dS_b * tl.exp(G_b)[:, None] + tl.dot(tl.trans(b_qg), b_do, input_precision=PREC)
                    - tl.dot(tl.trans(b_w), b_dvn, input_precision=PREC))
        b_dvl, b_do, G_a, G_b = nxt
    if STORE_DH0:
        st_halves(dh0 + (i_n * H + i_h) * K * V, dS_a, dS_b, p_a, p_b, m_av, m_bv, K)


@autotune([config(8, 2, BV=32), config(8, 3, BV=32), config(8, 1, BV=32), config(8, 2, BV=16)],
          key=["H", "K", "V"])
@triton.jit
def _bwd_inter_key_kernel(
    q, k, beta, G, Tm, h, v_new, do, dh, dv_new,
    dq_p, dk_p, dG_p, dT_p, dbeta_kp,  # out: partial dq, dk, dG [NTOK,H,K]; dT_p [NKB,NTOK,H,64]; dbeta_kp [NKB,NTOK,H]
    cu_seqlens, chunk_seq, chunk_pos,
    scale,
    NTOK, H, K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr, BC: tl.constexpr,
    PREC: tl.constexpr, DOT: tl.constexpr,
):
    """Per (chunk, head, channel block of BC): the key-side contractions over V, then the block's
    decay terms, and its shares of dT (d(T X) X^T) and dbeta for `_bwd_inter_value_kernel` to add.
    Dot operands in fp32 (tf32 dots for half inputs): with the input's half type dbeta went over the
    bf16 bound on the H200 (docs/kernels.md). The exception is dqg = do h^T, whose operands are both
    stored in the input's half type: a tf32 dot reproduces them exactly, so DOT gives the same sums."""
    i_c, i_h, i_cb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, L = chunk_span(cu_seqlens, chunk_seq, chunk_pos, i_c)
    o_c = tl.arange(0, 64)
    rows = tl.arange(0, 64)
    m_r = rows < L
    c0 = i_cb * BC
    o_k = c0 + tl.arange(0, BC)
    m_k = o_k < K
    p_h = h + i_c.to(tl.int64) * H * K * V + i_h * K * V
    p_dh = dh + i_c.to(tl.int64) * H * K * V + i_h * K * V

    # contractions over V: dqg = do h^T, d(T X) = -dv_new h^T, dkg = v_new dh^T, and sum_v h dh
    dqg = tl.zeros([64, BC], dtype=tl.float32)
    dwy = tl.zeros([64, BC], dtype=tl.float32)
    dkg = tl.zeros([64, BC], dtype=tl.float32)
    dGl = tl.zeros([BC], dtype=tl.float32)
    for v0 in range(0, V, BV):
        o_v = v0 + tl.arange(0, BV)
        m_v = o_v < V
        m_kv = m_k[:, None] & m_v[None, :]
        h_in = tl.load(p_h + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.)     # state_dtype
        b_h = h_in.to(tl.float32)
        b_dh = tl.load(p_dh + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.).to(tl.float32)
        b_do = _ld_tile(do, t0, L, i_h, H, V, o_v, m_v).to(DOT)
        b_dvn = _ld_chunk(dv_new, t0, L, i_h, H, V, o_v, m_v)
        b_vn = _ld_chunk(v_new, t0, L, i_h, H, V, o_v, m_v)
        dqg += tl.dot(b_do, tl.trans(h_in.to(DOT)), input_precision=PREC)
        dwy -= tl.dot(b_dvn, tl.trans(b_h), input_precision=PREC)
        dkg += tl.dot(b_vn, tl.trans(b_dh), input_precision=PREC)
        dGl += tl.sum(b_h * b_dh, axis=1)

    b_T = _ld_chunk(Tm, t0, L, i_h, H, 64, o_c, o_c < 64)                       # [64, 64]
    b_beta = tl.load(beta + (t0 + rows) * H + i_h, mask=m_r, other=0.).to(tl.float32)
    b_q = _ld_chunk(q, t0, L, i_h, H, K, o_k, m_k)
    b_k = _ld_chunk(k, t0, L, i_h, H, K, o_k, m_k)
    b_G = _ld_chunk(G, t0, L, i_h, H, K, o_k, m_k)
    e = tl.where(m_r[:, None], tl.exp(b_G), 0.)
    # w = T X, X = beta k exp(G)
    X = b_k * e * b_beta[:, None]
    dX = tl.dot(tl.trans(b_T), dwy, input_precision=PREC)
    p_part = (i_cb * NTOK + t0 + rows) * H + i_h                                # this block's partial rows
    tl.store(dT_p + p_part.to(tl.int64)[:, None] * 64 + o_c[None, :],
             tl.dot(dwy, tl.trans(X), input_precision=PREC), mask=m_r[:, None])
    tl.store(dbeta_kp + p_part, tl.sum(dX * b_k * e, axis=1), mask=m_r)
    b_dk = dX * e * b_beta[:, None]
    b_dG = dX * X
    # qg = scale q exp(G)
    b_dq = dqg * e * scale
    b_dG += dqg * b_q * e * scale
    # kg = k exp(G_last - G) and the chunk decay exp(G_last) of the state
    G_last = ld_row_at(G, t0, L - 1, L, i_h, H, K, c0, BC)
    eg = tl.where(m_r[:, None], tl.exp(G_last[None, :] - b_G), 0.)
    b_dk += dkg * eg
    b_dG -= dkg * b_k * eg
    dG_last = dGl * tl.exp(G_last) + tl.sum(dkg * b_k * eg, axis=0)
    b_dG += tl.where((rows == L - 1)[:, None], dG_last[None, :], 0.)
    _st_chunk(dq_p, b_dq, t0, L, i_h, H, K, o_k, m_k)
    _st_chunk(dk_p, b_dk, t0, L, i_h, H, K, o_k, m_k)
    _st_chunk(dG_p, b_dG, t0, L, i_h, H, K, o_k, m_k)


@autotune([config(4, 1, BV=32), config(4, 2, BV=32), config(4, 2, BV=16), config(8, 1, BV=32)], key=["H", "V"])
@triton.jit
def _bwd_inter_value_kernel(
    v, beta, Tm, v_new, do, dv_new, dT_p, dbeta_kp,
    dv, dA, dP, dbeta_p,              # out: dv [NTOK,H,V]; dA, dP [NTOK,H,64] f32; dbeta_p [NTOK,H] f32
    cu_seqlens, chunk_seq, chunk_pos,
    scale,
    NTOK, H, NKB, V: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    """Per (chunk, head): the value-side contractions over V (dAqk = do v_new^T -> dP,
    dT += dv_new (beta v)^T, dY = T^T dv_new -> dv and dbeta), then with the key blocks' shares
    dAkk = -T^T dT T^T (strictly lower) and the inter part of dbeta."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0, L = chunk_span(cu_seqlens, chunk_seq, chunk_pos, i_c)
    o_c = tl.arange(0, 64)
    rows = tl.arange(0, 64)
    m_r = rows < L

    b_T = _ld_chunk(Tm, t0, L, i_h, H, 64, o_c, o_c < 64)                       # [64, 64]
    b_beta = tl.load(beta + (t0 + rows) * H + i_h, mask=m_r, other=0.).to(tl.float32)
    dAqk = tl.zeros([64, 64], dtype=tl.float32)
    dT = tl.zeros([64, 64], dtype=tl.float32)
    dbeta = tl.zeros([64], dtype=tl.float32)
    for v0 in range(0, V, BV):
        o_v = v0 + tl.arange(0, BV)
        m_v = o_v < V
        b_vn = _ld_chunk(v_new, t0, L, i_h, H, V, o_v, m_v)
        b_do = _ld_chunk(do, t0, L, i_h, H, V, o_v, m_v)
        b_dvn = _ld_chunk(dv_new, t0, L, i_h, H, V, o_v, m_v)
        b_v = _ld_chunk(v, t0, L, i_h, H, V, o_v, m_v)
        dAqk += tl.dot(b_do, tl.trans(b_vn), input_precision=PREC)
        dT += tl.dot(b_dvn, tl.trans(b_v * b_beta[:, None]), input_precision=PREC)
        dY = tl.dot(tl.trans(b_T), b_dvn, input_precision=PREC)               # d(beta v) [64, BV]
        _st_chunk(dv, dY * b_beta[:, None], t0, L, i_h, H, V, o_v, m_v)
        dbeta += tl.sum(dY * b_v, axis=1)
    _st_chunk(dP, tl.where(rows[:, None] >= o_c[None, :], dAqk * scale, 0.), t0, L, i_h, H, 64, o_c, o_c < 64)

    for kb in range(0, NKB):
        p_part = (kb * NTOK + t0 + rows) * H + i_h
        dT += tl.load(dT_p + p_part.to(tl.int64)[:, None] * 64 + o_c[None, :], mask=m_r[:, None], other=0.)
        dbeta += tl.load(dbeta_kp + p_part, mask=m_r, other=0.)
    # T = (I + Akk)^-1  ->  dAkk = -T^T dT T^T, strictly lower
    b_dA = -tl.dot(tl.trans(b_T), tl.dot(dT, tl.trans(b_T), input_precision=PREC), input_precision=PREC)
    b_dA = tl.where(rows[:, None] > o_c[None, :], b_dA, 0.)
    _st_chunk(dA, b_dA, t0, L, i_h, H, 64, o_c, o_c < 64)
    tl.store(dbeta_p + (t0 + rows) * H + i_h, dbeta, mask=m_r)


# every BC is a multiple of BC_MIN (the unit of the per-channel-block partials)
@autotune([config(4, 1, BC=32), config(2, 1, BC=32), config(4, 1, BC=64), config(2, 1, BC=16),
           config(4, 2, BC=32)], key=["H", "K"])
@triton.jit
def _bwd_intra_kernel(
    q, k, beta, G, dA, dP, dq_p, dk_p, dG_p,
    dq, dk, dG,                               # out: dq, dk; dG f32 (before the reverse cumsum)
    dbeta_cb,                                 # [NCB, NTOK, H] f32: sum_c k R per channel block
    cu_seqlens, chunk_seq, chunk_pos,
    NTOK, H, NCB, K: tl.constexpr, BC: tl.constexpr, BC_MIN: tl.constexpr, PREC: tl.constexpr,
):
    """One program per (16-row block of a chunk, head, channel block): every term is per channel and
    per row except dbeta, a sum over channels, which each block writes as a partial for the caller to
    add. With the in-kernel L2 norm, dq and dk here are the gradients of the normalised q, k (the
    norm's backward needs whole rows: `_bwd_l2norm_kernel`). The partials are laid out in units of
    BC_MIN channels whatever BC the tuner picked: a block writes its sum to its first unit and zeros
    to the others, so every slot is written on every launch (tuning runs other BCs on the same
    buffers first)."""
    i_cI, i_h, i_cb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_c, I = i_cI // 4, i_cI % 4
    t0, L = chunk_span(cu_seqlens, chunk_seq, chunk_pos, i_c)
    rI = I * 16
    if rI >= L:
        return
    r16 = tl.arange(0, 16)
    rows = rI + r16
    m_r = rows < L
    c0 = i_cb * BC
    slot = i_cb * (BC // BC_MIN)                           # first BC_MIN unit of this channel block
    o_k = c0 + tl.arange(0, BC)
    m = m_r[:, None] & (o_k < K)[None, :]
    qI = ld_rows_at(q, t0, rI, L, i_h, H, K, c0, BC)
    kI = ld_rows_at(k, t0, rI, L, i_h, H, K, c0, BC)
    GI = ld_rows_at(G, t0, rI, L, i_h, H, K, c0, BC)
    bI = tl.load(beta + (t0 + rows) * H + i_h, mask=m_r, other=0.).to(tl.float32)

    # rows of block I from the blocks J < I:  dq_i = sum_j dP_ij k_j e^{G_i-G_j},  R_i = same with dA
    b_dq = tl.zeros([16, BC], dtype=tl.float32)
    b_R = tl.zeros([16, BC], dtype=tl.float32)
    # (the decays are written out here, not through triton_blocks.row_factors / left_factors: with
    # those helpers this kernel took 923 instead of 877 us on the H200, same run)
    if I > 0:
        Gr = ld_row_at(G, t0, rI, L, i_h, H, K, c0, BC)
        for J in range(0, I):
            rJ = J * 16
            kJe = ld_rows_at(k, t0, rJ, L, i_h, H, K, c0, BC) * tl.exp(
                Gr[None, :] - ld_rows_at(G, t0, rJ, L, i_h, H, K, c0, BC))
            b_dq += tl.dot(ld_cc(dP, t0, rI, rJ, L, i_h, H, 64), kJe, input_precision=PREC)
            b_R += tl.dot(ld_cc(dA, t0, rI, rJ, L, i_h, H, 64), kJe, input_precision=PREC)
        eI = tl.where(m_r[:, None], tl.exp(GI - Gr[None, :]), 0.)
        b_dq *= eI
        b_R *= eI

    # columns of block I from the blocks I' > I:  dkc_j = sum_i (beta_i dA_ij k_i + dP_ij q_i) e^{G_i-G_j}
    b_dkc = tl.zeros([16, BC], dtype=tl.float32)
    for Ip in range(I + 1, tl.cdiv(L, 16)):
        rP = Ip * 16
        mP = (rP + r16) < L
        Grp = ld_row_at(G, t0, rP, L, i_h, H, K, c0, BC)
        eP = tl.where(mP[:, None], tl.exp(ld_rows_at(G, t0, rP, L, i_h, H, K, c0, BC) - Grp[None, :]), 0.)
        bP = tl.load(beta + (t0 + rP + r16) * H + i_h, mask=mP, other=0.).to(tl.float32)
        kPe = ld_rows_at(k, t0, rP, L, i_h, H, K, c0, BC) * eP * bP[:, None]          # dM = beta_i dA
        qPe = ld_rows_at(q, t0, rP, L, i_h, H, K, c0, BC) * eP
        acc = (tl.dot(tl.trans(ld_cc(dA, t0, rP, rI, L, i_h, H, 64)), kPe, input_precision=PREC)
               + tl.dot(tl.trans(ld_cc(dP, t0, rP, rI, L, i_h, H, 64)), qPe, input_precision=PREC))
        b_dkc += acc * tl.where(m_r[:, None], tl.exp(Grp[None, :] - GI), 0.)

    # the diagonal block, one token j of it per step: its column (rows i >= j) and its row (columns
    # i <= j); one exponent e^{-|G_i - G_j|} per channel serves both, and is at most 1
    p_col = ((t0 + rows) * H + i_h).to(tl.int64) * 64 + rI             # dP / dA[rows, rI + j] at + j
    for j in range(0, tl.minimum(16, L - rI)):
        p_row = ((t0 + rI + j) * H + i_h).to(tl.int64) * 64 + rI + r16  # dP / dA[rI + j, rows]
        kj = ld_row_at(k, t0, rI + j, L, i_h, H, K, c0, BC)
        qj = ld_row_at(q, t0, rI + j, L, i_h, H, K, c0, BC)
        d = GI - ld_row_at(G, t0, rI + j, L, i_h, H, K, c0, BC)[None, :]
        below = (r16 >= j)[:, None]
        e = tl.where(m_r[:, None], tl.exp(tl.where(below, d, -d)), 0.)
        e_row = tl.where(below, e, 0.)
        e_col = tl.where((r16 <= j)[:, None], e, 0.)
        b_dq += tl.load(dP + p_col + j, mask=m_r, other=0.)[:, None] * kj[None, :] * e_row
        b_R += tl.load(dA + p_col + j, mask=m_r, other=0.)[:, None] * kj[None, :] * e_row
        bj = tl.load(beta + (t0 + rI + j) * H + i_h).to(tl.float32)
        b_dkc += (tl.load(dP + p_row)[:, None] * qj[None, :]
                  + (tl.load(dA + p_row) * bj)[:, None] * kj[None, :]) * e_col

    # combine with the partials of the inter kernel
    b_dG = qI * b_dq + kI * bI[:, None] * b_R - kI * b_dkc + ld_rows_at(dG_p, t0, rI, L, i_h, H, K, c0, BC)
    b_dq += ld_rows_at(dq_p, t0, rI, L, i_h, H, K, c0, BC)
    b_dk = bI[:, None] * b_R + b_dkc + ld_rows_at(dk_p, t0, rI, L, i_h, H, K, c0, BC)
    # this channel block's share of dbeta (the caller adds the blocks and the inter partial)
    p_b = slot.to(tl.int64) * NTOK * H + (t0 + rows) * H + i_h
    tl.store(dbeta_cb + p_b, tl.sum(kI * b_R, axis=1), mask=m_r)
    for z in tl.static_range(1, BC // BC_MIN):
        tl.store(dbeta_cb + p_b + z * NTOK * H, tl.zeros([16], dtype=tl.float32), mask=m_r & (slot + z < NCB))
    p_x = ((t0 + rows) * H + i_h).to(tl.int64)[:, None] * K + o_k[None, :]
    tl.store(dG + p_x, b_dG, mask=m)
    tl.store(dq + p_x, b_dq.to(dq.dtype.element_ty), mask=m)
    tl.store(dk + p_x, b_dk.to(dk.dtype.element_ty), mask=m)


@autotune([config(4, 1, BC=32), config(4, 1, BC=64), config(8, 1, BC=64), config(2, 1, BC=16)],
          key=["H", "K", "USE_GATE"])
@triton.jit
def _bwd_dg_kernel(
    g, dG, A_log, dt_bias,
    dg, dbias_p, dAlog_p,                     # dbias_p [NC, H, K]; dAlog_p [NC, H, NCB] (gate only)
    cu_seqlens, chunk_seq, chunk_pos,
    H, NCB, K: tl.constexpr, BC: tl.constexpr, BC_MIN: tl.constexpr,
    USE_GATE: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
):
    """One program per (chunk, head, channel block): G = cumsum(g) inside the chunk, so dg is the
    reverse cumulative sum of dG over the chunk's rows; with the gate in the kernel, then its backward
    to the raw gate input, dt_bias and A_log (per-chunk partials for the caller to add, A_log's in
    BC_MIN units as in `_bwd_intra_kernel`)."""
    i_c, i_h, i_cb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, L = chunk_span(cu_seqlens, chunk_seq, chunk_pos, i_c)
    o_k = i_cb * BC + tl.arange(0, BC)
    m_k = o_k < K
    m = (tl.arange(0, 64) < L)[:, None] & m_k[None, :]
    b_dG = _ld_chunk(dG, t0, L, i_h, H, K, o_k, m_k)                                   # [64, BC]
    b_dg = tl.sum(b_dG, axis=0)[None, :] - tl.cumsum(b_dG, axis=0) + b_dG
    if USE_GATE:
        a = -tl.exp(tl.load(A_log + i_h).to(tl.float32))
        x = _ld_chunk(g, t0, L, i_h, H, K, o_k, m_k)
        if HAS_DT_BIAS:
            x += tl.load(dt_bias + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)[None, :]
        sp = softplus(x)
        z = tl.exp(-tl.abs(x))
        sig = tl.where(x >= 0, 1. / (1. + z), z / (1. + z))
        b_dx = tl.where(m, b_dg * a * sig, 0.)
        _st_chunk(dg, b_dx, t0, L, i_h, H, K, o_k, m_k)
        tl.store(dbias_p + (i_c.to(tl.int64) * H + i_h) * K + o_k, tl.sum(b_dx, axis=0), mask=m_k)
        slot = i_cb * (BC // BC_MIN)
        p_a = dAlog_p + (i_c.to(tl.int64) * H + i_h) * NCB + slot
        tl.store(p_a, tl.sum(tl.where(m, b_dg * a * sp, 0.)))
        for u in tl.static_range(1, BC // BC_MIN):
            tl.store(p_a + u, 0., mask=slot + u < NCB)
    else:
        _st_chunk(dg, b_dg, t0, L, i_h, H, K, o_k, m_k)


@triton.jit
def _bwd_l2norm_kernel(
    q_raw, k_raw, dqn, dkn, dq, dk,   # raw q, k; f32 gradients of the normalised ones; out dq, dk
    cu_seqlens, chunk_seq, chunk_pos,
    H, K: tl.constexpr, BK: tl.constexpr,
):
    """Backward of y = x * rsqrt(|x|^2 + eps) for q and k, per (chunk, head), 16 rows at a time:
    dx = rsqrt(.) * (dy - y (y . dy))."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0, L = chunk_span(cu_seqlens, chunk_seq, chunk_pos, i_c)
    for I in tl.static_range(4):
        _l2norm_bwd_rows(q_raw, dqn, dq, t0, I * 16, L, i_h, H, K, BK)
        _l2norm_bwd_rows(k_raw, dkn, dk, t0, I * 16, L, i_h, H, K, BK)


@triton.jit
def _l2norm_bwd_rows(x, dy, dx, t0, r0, L, i_h, H, K: tl.constexpr, BK: tl.constexpr):
    """dx for rows r0..r0+15 of the chunk: the backward of y = x * rsqrt(|x|^2 + eps)."""
    b_x = ld_rows(x, t0, r0, L, i_h, H, K, BK)
    r = tl.rsqrt(tl.sum(b_x * b_x, axis=1) + 1e-6)
    y = b_x * r[:, None]
    b_dy = ld_rows(dy, t0, r0, L, i_h, H, K, BK)
    st_rows(dx, r[:, None] * (b_dy - y * tl.sum(y * b_dy, axis=1)[:, None]), t0, r0, L, i_h, H, K, BK)


def chunk_kda_bwd(do, dht, q, k, v, g, beta, scale, initial_state, cu_seqlens, table, saved,
                  use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, A_log=None, dt_bias=None):
    """Backward on the packed token axis. Returns (dq, dk, dv, dg, dbeta, dh0, dA_log, ddt_bias);
    dg is the gradient of the raw gate input when the gate is computed in the kernel."""
    _, NTOK, H, K = q.shape
    V = v.shape[-1]
    N = cu_seqlens.numel() - 1
    chunk_seq, chunk_pos, chunk_offsets, NC = table
    BK = next_pow2(K)
    prec = dot_precision(q.dtype)
    f32 = dict(device=q.device, dtype=torch.float32)
    dummy = torch.empty(1, **f32)
    G, qn, kn, w, Aqk, Tm, h, v_new, qg, kg = (saved[x] for x in ("G", "qn", "kn", "w", "Aqk", "T", "h", "v_new",
                                                                   "qg", "kg"))
    do = do.contiguous()

    dh = torch.empty(NC, H, K, V, device=q.device, dtype=state_dtype(q.dtype))
    dv_local = torch.empty(1, NTOK, H, V, **f32)
    dv_new = torch.empty(1, NTOK, H, V, **f32)
    # one compiled variant: a missing dht is read as zeros, dh0 always computed
    dh0 = torch.empty(N, H, K, V, **f32)
    dht = dht.contiguous() if dht is not None else torch.zeros(N, H, K, V, **f32)
    _bwd_dv_local_kernel[lambda meta: (triton.cdiv(V, meta["BV"]), NC, H)](
        Aqk, do, dv_local, cu_seqlens, chunk_seq, chunk_pos, H=H, V=V, PREC=prec, DOT=dot_dtype(q.dtype),
    )
    _bwd_state_kernel[lambda meta: (triton.cdiv(V, meta["BV"]), N * H)](
        tile_desc(qg), tile_desc(kg), tile_desc(w), G, do, dv_local, dh, dv_new, dht, dh0,
        cu_seqlens, chunk_offsets,
        H=H, NH_BUCKET=size_bucket(N * H), K=K, V=V, HAS_DHT=True, STORE_DH0=True, PREC=prec,
        DOT=dot_dtype(q.dtype),
    )
    dh0 = dh0 if initial_state is not None else None

    dv = torch.empty_like(v)
    dA = torch.empty(1, NTOK, H, CHUNK, **f32)
    dP = torch.empty(1, NTOK, H, CHUNK, **f32)
    dq_p = torch.empty(1, NTOK, H, K, **f32)
    dk_p = torch.empty(1, NTOK, H, K, **f32)
    dG_p = torch.empty(1, NTOK, H, K, **f32)
    dbeta_p = torch.empty(1, NTOK, H, **f32)
    NKB = triton.cdiv(K, INTER_BC)
    dT_p = torch.empty(NKB, NTOK, H, CHUNK, **f32)   # each key block's share of dT
    dbeta_kp = torch.empty(NKB, NTOK, H, **f32)
    _bwd_inter_key_kernel[(NC, H, NKB)](
        qn, kn, beta, G, Tm, h, v_new, do, dh, dv_new,
        dq_p, dk_p, dG_p, dT_p, dbeta_kp,
        cu_seqlens, chunk_seq, chunk_pos, scale,
        NTOK=NTOK, H=H, K=K, V=V, BC=INTER_BC, PREC=prec,
        DOT=dot_dtype(q.dtype) if do.dtype == q.dtype else tl.float32,       # do h^T exact in DOT
    )
    _bwd_inter_value_kernel[(NC, H)](
        v, beta, Tm, v_new, do, dv_new, dT_p, dbeta_kp,
        dv, dA, dP, dbeta_p,
        cu_seqlens, chunk_seq, chunk_pos, scale,
        NTOK=NTOK, H=H, NKB=NKB, V=V, PREC=prec,
    )
    del dT_p, dbeta_kp

    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dg = torch.empty_like(g)
    NCB = triton.cdiv(K, BC_MIN)                  # per-channel-block partials, in units of BC_MIN channels
    dbeta_cb = torch.empty(NCB, NTOK, H, **f32)
    dbias_p = torch.empty(NC, H, K, **f32) if use_gate_in_kernel else dummy
    dAlog_p = torch.empty(NC, H, NCB, **f32) if use_gate_in_kernel else dummy
    # with the L2 norm, the intra kernel's dq / dk are those of the normalised q, k (fp32 scratch)
    dqn = torch.empty(1, NTOK, H, K, **f32) if use_qk_l2norm_in_kernel else dq
    dkn = torch.empty(1, NTOK, H, K, **f32) if use_qk_l2norm_in_kernel else dk
    dG = torch.empty(1, NTOK, H, K, **f32)
    _bwd_intra_kernel[lambda meta: (NC * 4, H, triton.cdiv(K, meta["BC"]))](
        qn, kn, beta, G, dA, dP, dq_p, dk_p, dG_p,
        dqn, dkn, dG, dbeta_cb,
        cu_seqlens, chunk_seq, chunk_pos,
        NTOK=NTOK, H=H, NCB=NCB, K=K, BC_MIN=BC_MIN, PREC=prec,
    )
    _bwd_dg_kernel[lambda meta: (NC, H, triton.cdiv(K, meta["BC"]))](
        g, dG, A_log if A_log is not None else dummy, dt_bias if dt_bias is not None else dummy,
        dg, dbias_p, dAlog_p,
        cu_seqlens, chunk_seq, chunk_pos,
        H=H, NCB=NCB, K=K, BC_MIN=BC_MIN, USE_GATE=use_gate_in_kernel, HAS_DT_BIAS=dt_bias is not None,
    )
    if use_qk_l2norm_in_kernel:
        _bwd_l2norm_kernel[(NC, H)](q, k, dqn, dkn, dq, dk, cu_seqlens, chunk_seq, chunk_pos, H=H, K=K, BK=BK)
    dbeta = (dbeta_p + dbeta_cb.sum(0)).to(beta.dtype)
    dA_log = ddt_bias = None
    if use_gate_in_kernel:
        dA_log = dAlog_p.sum((0, 2)).reshape(A_log.shape).to(A_log.dtype)
        if dt_bias is not None:
            ddt_bias = dbias_p.sum(0).reshape(dt_bias.shape).to(dt_bias.dtype)
    return dq, dk, dv, dg, dbeta, dh0, dA_log, ddt_bias
