"""Kimi Delta Attention: chunkwise (training, prefill) and recurrent (decoding) forms.

All functions share fla's argument conventions: q, k, g [B, T, H, K]; v [B, T, H, V]; beta [B, T, H];
cu_seqlens int32 [N + 1] with B = 1 for packed variable-length batches; states [N, H, K, V] float32.
"""
import torch

from .chunk_torch import chunk_kda_torch
from .common import kda_gate, l2norm, padded_index, to_padded
from .naive import naive_recurrent_kda


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype in (torch.float32, torch.bfloat16, torch.float16)


def chunk_kda(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
              cu_seqlens=None, **kwargs):
    """Chunkwise KDA: the Triton kernels on CUDA (forward and backward), the PyTorch chunk path
    elsewhere (and for float64)."""
    if _use_triton(q):
        from .triton_autograd import chunk_kda_triton
        return chunk_kda_triton(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                                output_final_state=output_final_state, cu_seqlens=cu_seqlens, **kwargs)
    return chunk_kda_torch(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, cu_seqlens=cu_seqlens, **kwargs)


def fused_recurrent_kda(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                        cu_seqlens=None, ssm_state_indices=None, inplace_final_state=False, **kwargs):
    """Token-by-token KDA for decoding a few steps from a state (no autograd on CUDA).

    ssm_state_indices [N] int32: sequence n reads (and with inplace_final_state writes back) slot
    ssm_state_indices[n] of the state pool initial_state [P, H, K, V]; a negative index marks a
    padding sequence (zero output, no state touched). On CUDA this is the Triton kernel; elsewhere
    the reference loop (same contract)."""
    if _use_triton(q):
        from .triton_recurrent import fused_recurrent_kda_triton
        return fused_recurrent_kda_triton(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                                          output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                                          ssm_state_indices=ssm_state_indices,
                                          inplace_final_state=inplace_final_state, **kwargs)
    return _recurrent_with_pool(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                                ssm_state_indices, inplace_final_state, **kwargs)


def _recurrent_with_pool(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                         ssm_state_indices, inplace_final_state, **kwargs):
    """The reference recurrence with the state-pool arguments of the Triton decoder."""
    if ssm_state_indices is None and not inplace_final_state:
        return naive_recurrent_kda(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                                   output_final_state=output_final_state, cu_seqlens=cu_seqlens, **kwargs)
    if initial_state is None:
        raise ValueError("ssm_state_indices / inplace_final_state need initial_state (the state pool)")
    B, T, H, K = q.shape
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    idx = (torch.arange(N, device=q.device) if ssm_state_indices is None else ssm_state_indices.long())
    valid = idx >= 0
    h0 = initial_state.new_zeros(N, *initial_state.shape[1:])
    h0[valid] = initial_state[idx[valid]]
    o, ht = naive_recurrent_kda(q, k, v, g, beta, scale=scale, initial_state=h0, output_final_state=True,
                                cu_seqlens=cu_seqlens, **kwargs)
    # padding sequences: zero output
    if cu_seqlens is None:
        o[~valid] = 0
    else:
        for n in torch.nonzero(~valid).flatten().tolist():
            o[0, int(cu_seqlens[n]): int(cu_seqlens[n + 1])] = 0
    ht = ht.to(initial_state.dtype)
    if inplace_final_state:
        initial_state[idx[valid]] = ht[valid]
        return o, initial_state
    ht[~valid] = 0
    return o, (ht if output_final_state else None)


__all__ = ["chunk_kda", "chunk_kda_torch", "fused_recurrent_kda", "naive_recurrent_kda", "kda_gate", "l2norm",
           "padded_index", "to_padded"]
