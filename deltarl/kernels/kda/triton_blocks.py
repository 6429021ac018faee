"""Tile helpers shared by the chunk kernels: 16-row loads and stores inside a 64-token chunk, the
exactly-decayed 16 x 16 blocks left of the diagonal of the intra-chunk matrices, the inverse of
I + Akk, and the gate's softplus (also used by the recurrent decoder).

Rows are tokens of one chunk starting at absolute token t0 (packed token axis); `L` is the number of
valid rows of the chunk (the last chunk of a sequence can be short). Tensors are token-major:
element (token t, head h, channel d) of an [*, H, D] tensor sits at (t * H + h) * D + d.

Decay and overflow: exp(G_i - G_j) for j <= i is at most 1, but exp(G_i) or exp(-G_j) alone can
overflow within a chunk when decays are strong. Entries left of a diagonal block (row i in block I,
column j before it) split the exponent at the first row r of block I: exp(G_i - G_r) <= 1 and
exp(G_r - G_j) <= 1. Inside a diagonal block the forward takes each pair's own exp(G_i - G_j)
(triton_chunk_fwd._fwd_diag_kernel), as the backward intra kernel does.
"""
import triton
import triton.language as tl


@triton.jit
def chunk_span(cu_seqlens, chunk_seq, chunk_pos, i_c):
    """(t0, L): the first token (int64) of chunk i_c of the chunk table, and its length (<= 64)."""
    i_n = tl.load(chunk_seq + i_c)
    t0 = tl.load(cu_seqlens + i_n).to(tl.int64) + tl.load(chunk_pos + i_c).to(tl.int64) * 64
    L = tl.minimum(tl.load(cu_seqlens + i_n + 1).to(tl.int64) - t0, 64).to(tl.int32)
    return t0, L


@triton.jit
def softplus(x):
    """log(1 + e^x) with torch's threshold (x > 20 -> x), for the gate -exp(A_log) softplus(x + dt_bias)."""
    return tl.where(x > 20., x, tl.log(1. + tl.exp(tl.minimum(x, 20.))))


@triton.jit
def ld_rows(base, t0, r0, L, i_h, H, D: tl.constexpr, BD: tl.constexpr):
    """[16, BD] float32 tile: rows r0..r0+15 of the chunk, zero past L or past D."""
    return ld_rows_at(base, t0, r0, L, i_h, H, D, 0, BD)


@triton.jit
def ld_rows_at(base, t0, r0, L, i_h, H, D: tl.constexpr, c0, BC: tl.constexpr):
    """[16, BC] float32 tile: rows r0..r0+15, columns c0..c0+BC-1, zero past L or past D."""
    rows = r0 + tl.arange(0, 16)
    o_d = c0 + tl.arange(0, BC)
    m = (rows < L)[:, None] & (o_d < D)[None, :]
    p = base + ((t0 + rows) * H + i_h).to(tl.int64)[:, None] * D + o_d[None, :]
    return tl.load(p, mask=m, other=0.).to(tl.float32)


@triton.jit
def ld_row_at(base, t0, r, L, i_h, H, D: tl.constexpr, c0, BC: tl.constexpr):
    """[BC] float32: row r, columns c0..c0+BC-1, zero when r >= L or past D."""
    o_d = c0 + tl.arange(0, BC)
    p = base + ((t0 + r) * H + i_h).to(tl.int64) * D + o_d
    return tl.load(p, mask=(o_d < D) & (r < L), other=0.).to(tl.float32)


@triton.jit
def st_rows(base, x, t0, r0, L, i_h, H, D: tl.constexpr, BD: tl.constexpr):
    """Store a [16, BD] tile at rows r0..r0+15 of the chunk (rows past L and columns past D skipped)."""
    rows = r0 + tl.arange(0, 16)
    o_d = tl.arange(0, BD)
    m = (rows < L)[:, None] & (o_d < D)[None, :]
    p = base + ((t0 + rows) * H + i_h).to(tl.int64)[:, None] * D + o_d[None, :]
    tl.store(p, x.to(base.dtype.element_ty), mask=m)


@triton.jit
def ld_halves(base, p_a, p_b, m_a, m_b, K: tl.constexpr):
    """A [K, V] state (K <= 128) at `base` as two [64, BV] float32 tiles, channels 0..63 at offsets
    p_a and 64..127 at p_b (masks m_a, m_b); the second is zero when K <= 64."""
    S_a = tl.load(base + p_a, mask=m_a, other=0.).to(tl.float32)
    S_b = tl.zeros_like(S_a)
    if K > 64:
        S_b = tl.load(base + p_b, mask=m_b, other=0.).to(tl.float32)
    return S_a, S_b


@triton.jit
def st_halves(base, S_a, S_b, p_a, p_b, m_a, m_b, K: tl.constexpr):
    """Store the two halves of a state (see ld_halves) in base's dtype."""
    tl.store(base + p_a, S_a.to(base.dtype.element_ty), mask=m_a)
    if K > 64:
        tl.store(base + p_b, S_b.to(base.dtype.element_ty), mask=m_b)


@triton.jit
def ld_cc(base, t0, rI, rJ, L, i_h, H, C: tl.constexpr):
    """[16, 16] block (rows rI.., columns rJ..) of a per-chunk [C, C] matrix stored token-major
    as [NTOK, H, C]; rows past L read as zero."""
    rows = rI + tl.arange(0, 16)
    cols = rJ + tl.arange(0, 16)
    p = base + ((t0 + rows) * H + i_h).to(tl.int64)[:, None] * C + cols[None, :]
    return tl.load(p, mask=(rows < L)[:, None], other=0.).to(tl.float32)


@triton.jit
def st_cc(base, x, t0, rI, rJ, L, i_h, H, C: tl.constexpr):
    """Store a [16, 16] block of a per-chunk [C, C] matrix (see ld_cc)."""
    rows = rI + tl.arange(0, 16)
    cols = rJ + tl.arange(0, 16)
    p = base + ((t0 + rows) * H + i_h).to(tl.int64)[:, None] * C + cols[None, :]
    tl.store(p, x.to(base.dtype.element_ty), mask=(rows < L)[:, None])


@triton.jit
def left_factors(ks, G, t0, rJ, rI, L, i_h, H, K: tl.constexpr, c0, BC: tl.constexpr, Gr):
    """k_j e^(G_r - G_j) for the 16 rows j of block J, against the reference row r = rI of a later
    block I (at most 1); zero when block I starts past L."""
    m = ((rJ + tl.arange(0, 16)) < L) & (rI < L)
    return tl.where(m[:, None], ld_rows_at(ks, t0, rJ, L, i_h, H, K, c0, BC)
                    * tl.exp(Gr[None, :] - ld_rows_at(G, t0, rJ, L, i_h, H, K, c0, BC)), 0.)


@triton.jit
def row_factors(G, t0, rI, L, i_h, H, K: tl.constexpr, c0, BC: tl.constexpr):
    """(e^(G_i - G_r) for the 16 rows i of block I, zero past L; G_r) with r = rI, the block's first
    row (factors at most 1)."""
    Gr = ld_row_at(G, t0, rI, L, i_h, H, K, c0, BC)
    e = tl.exp(ld_rows_at(G, t0, rI, L, i_h, H, K, c0, BC) - Gr[None, :])
    return tl.where(((rI + tl.arange(0, 16)) < L)[:, None], e, 0.), Gr


@triton.jit
def _right_rows(qs, ks, G, t0, rI, L, i_h, H, K: tl.constexpr, c0, BC: tl.constexpr):
    """(k_i e^(G_i - G_r), q_i e^(G_i - G_r) for the 16 rows i of block I, zero past L; G_r)
    (`row_factors`)."""
    e, Gr = row_factors(G, t0, rI, L, i_h, H, K, c0, BC)
    return ld_rows_at(ks, t0, rI, L, i_h, H, K, c0, BC) * e, ld_rows_at(qs, t0, rI, L, i_h, H, K, c0, BC) * e, Gr


@triton.jit
def _add_left_block(A, P, k_e, q_e, ks, G, t0, rJ, rI, L, i_h, H, K: tl.constexpr, c0, BC: tl.constexpr, Gr,
                    PREC: tl.constexpr):
    """Block (I, J)'s shares of Akk and Aqk from one channel block, added to A and P: the rows of block
    I decayed to its first row rI (k_e, q_e from `_right_rows`) against block J's keys decayed from it."""
    kr = tl.trans(left_factors(ks, G, t0, rJ, rI, L, i_h, H, K, c0, BC, Gr))                # [BC, 16]
    return A + tl.dot(k_e, kr, input_precision=PREC), P + tl.dot(q_e, kr, input_precision=PREC)


@triton.jit
def off_diag_blocks(qs, ks, G, t0, L, i_h, H, K: tl.constexpr, BC: tl.constexpr, PREC: tl.constexpr):
    """The six 16 x 16 blocks left of the diagonal of a chunk's
    Akk[i, j] = sum_c k_i k_j e^(G_i - G_j)  and  Aqk[i, j] = sum_c q_i k_j e^(G_i - G_j),
    summed over channel blocks of BC, each as one [16, BC] x [BC, 16] product around the first row of
    its row block (no beta, no scale). Returns A10, A20, A21, A30, A31, A32, then the same for Aqk."""
    z = tl.zeros([16, 16], dtype=tl.float32)
    A10, A20, A21, A30, A31, A32 = z, z, z, z, z, z
    P10, P20, P21, P30, P31, P32 = z, z, z, z, z, z
    for c0 in range(0, K, BC):
        k1e, q1e, G1 = _right_rows(qs, ks, G, t0, 16, L, i_h, H, K, c0, BC)
        A10, P10 = _add_left_block(A10, P10, k1e, q1e, ks, G, t0, 0, 16, L, i_h, H, K, c0, BC, G1, PREC)
        k2e, q2e, G2 = _right_rows(qs, ks, G, t0, 32, L, i_h, H, K, c0, BC)
        A20, P20 = _add_left_block(A20, P20, k2e, q2e, ks, G, t0, 0, 32, L, i_h, H, K, c0, BC, G2, PREC)
        A21, P21 = _add_left_block(A21, P21, k2e, q2e, ks, G, t0, 16, 32, L, i_h, H, K, c0, BC, G2, PREC)
        k3e, q3e, G3 = _right_rows(qs, ks, G, t0, 48, L, i_h, H, K, c0, BC)
        A30, P30 = _add_left_block(A30, P30, k3e, q3e, ks, G, t0, 0, 48, L, i_h, H, K, c0, BC, G3, PREC)
        A31, P31 = _add_left_block(A31, P31, k3e, q3e, ks, G, t0, 16, 48, L, i_h, H, K, c0, BC, G3, PREC)
        A32, P32 = _add_left_block(A32, P32, k3e, q3e, ks, G, t0, 32, 48, L, i_h, H, K, c0, BC, G3, PREC)
    return A10, A20, A21, A30, A31, A32, P10, P20, P21, P30, P31, P32


@triton.jit
def unit_lower_inverse(A_d, t0, L, i_h, H, A10, A20, A21, A30, A31, A32, PREC: tl.constexpr):
    """T = (I + A)^-1 for a chunk's strictly lower-triangular 64 x 64 A: its four diagonal 16 x 16
    blocks in memory (A_d, [NTOK, H, 16], zero on and above the diagonal), the six left of them in
    registers. The diagonal blocks by substitution (`inv_unit_lower16`), then block forward
    substitution T_IJ = -T_II sum_k A_Ik T_kJ. Returns T00, T10, T11, T20, T21, T22, T30, T31, T32, T33."""
    T00 = inv_unit_lower16(A_d, t0, 0, L, i_h, H)
    T11 = inv_unit_lower16(A_d, t0, 16, L, i_h, H)
    T22 = inv_unit_lower16(A_d, t0, 32, L, i_h, H)
    T33 = inv_unit_lower16(A_d, t0, 48, L, i_h, H)
    T10 = -tl.dot(T11, tl.dot(A10, T00, input_precision=PREC), input_precision=PREC)
    T21 = -tl.dot(T22, tl.dot(A21, T11, input_precision=PREC), input_precision=PREC)
    T32 = -tl.dot(T33, tl.dot(A32, T22, input_precision=PREC), input_precision=PREC)
    T20 = -tl.dot(T22, tl.dot(A20, T00, input_precision=PREC) + tl.dot(A21, T10, input_precision=PREC),
                  input_precision=PREC)
    T31 = -tl.dot(T33, tl.dot(A31, T11, input_precision=PREC) + tl.dot(A32, T21, input_precision=PREC),
                  input_precision=PREC)
    T30 = -tl.dot(T33, tl.dot(A30, T00, input_precision=PREC) + tl.dot(A31, T10, input_precision=PREC)
                  + tl.dot(A32, T20, input_precision=PREC), input_precision=PREC)
    return T00, T10, T11, T20, T21, T22, T30, T31, T32, T33


@triton.jit
def inv_unit_lower16(A_d, t0, rI, L, i_h, H):
    """(I + A)^-1 for the strictly lower [16, 16] diagonal block of rows rI.. of A_d (see
    unit_lower_inverse), by forward substitution: row i of X is e_i - sum_{j<i} A[i, j] X[j], with
    row i of A read from memory (a load, not a reduction over the register tile); rows past L are
    identity rows."""
    r = tl.arange(0, 16)
    X = tl.where(r[:, None] == r[None, :], 1., 0.)
    for i in range(1, 16):
        a = tl.load(A_d + ((t0 + rI + i) * H + i_h).to(tl.int64) * 16 + r, mask=(rI + i < L) & (r < i), other=0.)
        new = tl.sum(a[:, None] * X, axis=0)                                    # a @ X
        X = tl.where(r[:, None] == i, tl.where(r == i, 1., 0.)[None, :] - new[None, :], X)
    return X
