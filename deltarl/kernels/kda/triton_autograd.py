"""`chunk_kda_triton`: the Triton forward and backward behind one torch.autograd.Function.

Gradients flow to q, k, v, g, beta and initial_state, and with the gate computed in the kernel to
A_log and dt_bias (g is then the raw gate input x of -exp(A_log) * softplus(x + dt_bias)); with the
in-kernel L2 norm, q and k gradients go through the normalisation.
"""
import torch

from .common import cached_on_values, check_shapes
from .triton_chunk_bwd import chunk_kda_bwd
from .triton_chunk_fwd import chunk_kda_fwd
from .triton_utils import check_env_pins, chunk_table, default_cu_seqlens, dense_chunk_table

check_env_pins()          # every autotuned kernel is defined by now: a mistyped pin fails here

_SAVED = ("G", "qn", "kn", "w", "Aqk", "T", "h", "v_new", "qg", "kg")


def packed_chunk_table(cu_seqlens):
    """(cu_seqlens as int32, its chunk table): one host sync, so computed once per cu_seqlens tensor."""
    cu = cu_seqlens.to(torch.int32)
    return cu, chunk_table(cu)


class ChunkKDAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, beta, A_log, dt_bias, scale, initial_state, output_final_state,
                cu_seqlens, use_qk_l2norm_in_kernel, use_gate_in_kernel):
        B, T, H, K = q.shape
        V = v.shape[-1]
        if cu_seqlens is None:
            cu, table = default_cu_seqlens(B, T, q.device), dense_chunk_table(B, T, q.device)
        else:
            cu, table = cached_on_values(cu_seqlens, packed_chunk_table)
        flat = [x.reshape(1, B * T, *x.shape[2:]).contiguous() for x in (q, k, v, g, beta)]
        h0 = initial_state.float().contiguous() if initial_state is not None else None
        o, ht, saved = chunk_kda_fwd(*flat, scale, h0, output_final_state, cu, table,
                                     use_qk_l2norm_in_kernel, use_gate_in_kernel, A_log, dt_bias)
        ctx.save_for_backward(*flat, A_log, dt_bias, h0, cu, *table[:3], *(saved[n] for n in _SAVED))
        ctx.meta = (B, T, scale, table[3], use_qk_l2norm_in_kernel, use_gate_in_kernel,
                    initial_state is not None and initial_state.dtype)
        return o.reshape(B, T, H, V), ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, beta, A_log, dt_bias, h0, cu, cseq, cpos, coff, *rest = ctx.saved_tensors
        saved = dict(zip(_SAVED, rest))
        B, T, scale, NC, use_l2, use_gate, h0_dtype = ctx.meta
        H, K, V = q.shape[2], q.shape[3], v.shape[3]
        do = do.reshape(1, B * T, H, V)
        dq, dk, dv, dg, dbeta, dh0, dA_log, ddt_bias = chunk_kda_bwd(
            do, dht, q, k, v, g, beta, scale, h0, cu, (cseq, cpos, coff, NC), saved,
            use_l2, use_gate, A_log, dt_bias)
        unflat = lambda x: x.reshape(B, T, *x.shape[2:])  # noqa: E731
        if dh0 is not None:
            dh0 = dh0.to(h0_dtype)
        return (unflat(dq), unflat(dk), unflat(dv), unflat(dg), unflat(dbeta), dA_log, ddt_bias,
                None, dh0, None, None, None, None)


def chunk_kda_triton(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                     cu_seqlens=None, use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False,
                     A_log=None, dt_bias=None):
    """Chunkwise KDA (the chunk_kda contract) with Triton kernels forward and backward.

    q, k: [B, T, H, K] in bf16/fp16/fp32; v [B, T, H, V]; g [B, T, H, K] float32 log decay (or the
    raw gate input with use_gate_in_kernel); beta [B, T, H]; initial_state [N, H, K, V] float32.
    Returns (o [B, T, H, V] in v's dtype, final_state [N, H, K, V] float32 or None)."""
    check_shapes(q, k, v, g, beta, initial_state, cu_seqlens)
    if use_gate_in_kernel and A_log is None:
        raise ValueError("use_gate_in_kernel=True needs A_log (and optionally dt_bias)")
    if q.dtype == torch.float64:
        raise ValueError("the Triton path takes fp32/bf16/fp16; use chunk_kda_torch for float64")
    if q.shape[-1] > 128:
        raise ValueError(f"the Triton state passes hold K <= 128 channels (two halves of 64), got K = {q.shape[-1]}")
    if q.shape[-1] % 8:
        raise ValueError(f"the Triton state passes read key tiles through TMA descriptors, which need K a "
                         f"multiple of 8 (16-byte rows), got K = {q.shape[-1]}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return ChunkKDAFunction.apply(q, k, v, g, beta, A_log, dt_bias, scale, initial_state,
                                  output_final_state, cu_seqlens, use_qk_l2norm_in_kernel,
                                  use_gate_in_kernel)
