"""Kimi Delta Attention: chunkwise (training, prefill) and recurrent (decoding) forms.

All functions share fla's argument conventions: q, k, g [B, T, H, K]; v [B, T, H, V]; beta [B, T, H];
cu_seqlens int32 [N + 1] with B = 1 for packed variable-length batches; states [N, H, K, V] float32.
"""
from .chunk_torch import chunk_kda_torch
from .common import kda_gate, l2norm
from .naive import naive_recurrent_kda


def chunk_kda(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
              cu_seqlens=None, **kwargs):
    """Chunkwise KDA: the Triton kernels on CUDA, the PyTorch chunk path elsewhere."""
    return chunk_kda_torch(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, cu_seqlens=cu_seqlens, **kwargs)


def fused_recurrent_kda(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                        cu_seqlens=None, **kwargs):
    """Token-by-token KDA for decoding a few steps from a state."""
    return naive_recurrent_kda(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                               output_final_state=output_final_state, cu_seqlens=cu_seqlens, **kwargs)


__all__ = ["chunk_kda", "chunk_kda_torch", "fused_recurrent_kda", "naive_recurrent_kda", "kda_gate", "l2norm"]
