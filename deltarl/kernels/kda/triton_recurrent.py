"""Token-by-token KDA in Triton, for decoding: many sequences at once, states updated in place.

One program owns one (sequence, head, V-block) state tile S [K, BV] in registers and walks its
tokens:

    S   = exp(g_t)[:, None] * S
    S  += k_t (beta_t (v_t - S^T k_t))^T
    o_t = S^T (scale * q_t)

The state is read once and written once per call, so a decode step costs about the time to move
the state through memory. States live in a pool [P, H, K, V] (float32); `ssm_state_indices[n]`
names the slot of sequence n (a negative index means "no sequence here": the program writes zero
outputs and touches no state), so an engine can keep its states where they are.
"""
import torch
import triton
import triton.language as tl

from .common import check_shapes
from . import triton_utils  # noqa: F401  (interpreter fix)
from .triton_blocks import softplus


@triton.jit
def _recurrent_kda_fwd_kernel(
    q, k, v, g, beta, o,              # q, k, g: [NTOK, H, K]; v, o: [NTOK, H, V]; beta: [NTOK, H]
    h0, ht,                           # state pools [P, H, K, V] float32 (ht may alias h0)
    state_idx, cu_seqlens,            # [N] int32 (slot per sequence), [N + 1] int32
    A_log, dt_bias,                   # gate parameters [H], [H * K] (used when USE_GATE)
    scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, HAS_IDX: tl.constexpr,
    USE_L2NORM: tl.constexpr, USE_GATE: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]

    slot = i_n.to(tl.int64)
    if HAS_IDX:
        slot = tl.load(state_idx + i_n).to(tl.int64)
    if slot < 0:
        # padding slot: zero outputs, no state touched
        for t in range(bos, eos):
            tl.store(o + (t * H + i_h) * V + o_v, tl.zeros([BV], tl.float32).to(o.dtype.element_ty), mask=m_v)
        return

    # [BK, BV] state tile
    p_state = (slot * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + p_state, mask=m_kv, other=0.).to(tl.float32)
    if USE_GATE:
        a = -tl.exp(tl.load(A_log + i_h).to(tl.float32))
        if HAS_DT_BIAS:
            bias = tl.load(dt_bias + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)

    for t in range(bos, eos):
        b_q = tl.load(q + (t * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_k = tl.load(k + (t * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + (t * H + i_h) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        b_g = tl.load(g + (t * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_beta = tl.load(beta + t * H + i_h).to(tl.float32)
        if USE_L2NORM:
            b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q) + 1e-6)
            b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k) + 1e-6)
        if USE_GATE:
            x = b_g
            if HAS_DT_BIAS:
                x = x + bias
            b_g = tl.where(m_k, a * softplus(x), 0.)
        S = S * tl.exp(b_g)[:, None]
        pred = tl.sum(S * b_k[:, None], axis=0)                     # [BV]
        delta = b_beta * (b_v - pred)
        S += b_k[:, None] * delta[None, :]
        b_o = tl.sum(S * (b_q * scale)[:, None], axis=0)            # [BV]
        tl.store(o + (t * H + i_h) * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)

    if STORE_HT:
        tl.store(ht + p_state, S, mask=m_kv)


def fused_recurrent_kda_triton(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                               cu_seqlens=None, ssm_state_indices=None, inplace_final_state=False,
                               use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False,
                               A_log=None, dt_bias=None):
    """Recurrent KDA forward (no autograd) with the chunk_kda contract plus a state pool.

    initial_state: [N, H, K, V] float32, or with `ssm_state_indices` [N] a pool [P, H, K, V] from
    which sequence n reads slot ssm_state_indices[n]. With `inplace_final_state=True` the final
    states are written back into `initial_state` (at the same slots) and it is returned as the
    final state; otherwise a new [N, H, K, V] tensor is returned when `output_final_state`.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    if ssm_state_indices is None:
        check_shapes(q, k, v, g, beta, initial_state, cu_seqlens)
    if cu_seqlens is None:
        cu_seqlens = torch.arange(0, B * T + 1, T, device=q.device, dtype=torch.int32)
    elif B != 1:
        raise ValueError(f"cu_seqlens needs a packed batch with B == 1, got B = {B}")
    N = cu_seqlens.numel() - 1
    if ssm_state_indices is not None:
        if initial_state is None:
            raise ValueError("ssm_state_indices needs initial_state (the state pool)")
        if ssm_state_indices.shape != (N,):
            raise ValueError(f"ssm_state_indices must be [N] = [{N}], got {tuple(ssm_state_indices.shape)}")
        if initial_state.shape[1:] != (H, K, V):
            raise ValueError(f"state pool must be [P, H, K, V] with H, K, V = {(H, K, V)}")
    if use_gate_in_kernel and A_log is None:
        raise ValueError("use_gate_in_kernel=True needs A_log (and optionally dt_bias)")
    if initial_state is not None and initial_state.dtype != torch.float32:
        raise ValueError("states are float32")
    if inplace_final_state and initial_state is None:
        raise ValueError("inplace_final_state needs initial_state")
    scale = K ** -0.5 if scale is None else scale

    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    o = torch.empty_like(v)
    if inplace_final_state:
        assert initial_state.is_contiguous(), "an in-place state pool must be contiguous"
        ht = initial_state
    elif output_final_state:
        # zeros: rows of padding sequences (negative index) are never written
        ht = q.new_zeros(N, H, K, V, dtype=torch.float32)
    else:
        ht = None
    idx = ssm_state_indices
    if idx is not None and not inplace_final_state:
        # read from the pool at idx, write new [N, ...] states in order: gather first (cheap), then
        # run without indices but keep padding (negative) rows as zero states.
        valid = idx >= 0
        h0 = torch.zeros(N, H, K, V, device=q.device, dtype=torch.float32)
        h0[valid] = initial_state[idx[valid].long()]
        initial_state, idx = h0, torch.where(valid, torch.arange(N, device=q.device, dtype=idx.dtype), idx)
    BK = triton.next_power_of_2(K)
    BV = min(triton.next_power_of_2(V), 32 if BK > 64 else 64)
    dummy = q.new_empty(1, dtype=torch.float32)
    grid = (triton.cdiv(V, BV), N * H)
    _recurrent_kda_fwd_kernel[grid](
        q, k, v, g, beta, o,
        initial_state if initial_state is not None else dummy,
        ht if ht is not None else dummy,
        idx.to(torch.int32).contiguous() if idx is not None else cu_seqlens,
        cu_seqlens.to(torch.int32).contiguous(),
        A_log.contiguous() if A_log is not None else dummy,
        dt_bias.contiguous() if dt_bias is not None else dummy,
        scale,
        H=H, K=K, V=V, BK=BK, BV=BV,
        HAS_H0=initial_state is not None, STORE_HT=ht is not None, HAS_IDX=idx is not None,
        USE_L2NORM=use_qk_l2norm_in_kernel, USE_GATE=use_gate_in_kernel, HAS_DT_BIAS=dt_bias is not None,
        num_warps=4 if BK * BV >= 4096 else 2,
    )
    return o, ht if (output_final_state or inplace_final_state) else None
