"""Input preparation shared by every KDA implementation.

The fused kernels can normalise q/k and compute the decay gate in-kernel; the reference paths do
the same work here, in PyTorch, so all implementations accept one argument list.
"""
import weakref

import torch
import torch.nn.functional as F

_FROM_VALUES = {}    # (id(tensor), fn) -> (weak reference, in-place version, fn(tensor))


def cached_on_values(tensor: torch.Tensor, fn):
    """fn(tensor), computed once while `tensor` is the same object with the same in-place version.

    For what reads a small index tensor back to the host (cu_seqlens: its bounds, the chunk table):
    each read is a host sync that stalls the kernel launches after it, and a model passes one
    cu_seqlens to every layer of a step."""
    key = (id(tensor), fn)
    hit = _FROM_VALUES.get(key)
    if hit is not None and hit[0]() is tensor and hit[1] == tensor._version:
        return hit[2]
    value = fn(tensor)
    if len(_FROM_VALUES) >= 256:                       # entries of dead tensors: drop them all now and then
        _FROM_VALUES.clear()
    _FROM_VALUES[key] = (weakref.ref(tensor), tensor._version, value)
    return value


def _bounds(cu_seqlens: torch.Tensor) -> list:
    return cu_seqlens[[0, -1]].tolist()


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dimension, computed in float32 or better."""
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


def kda_gate(g_raw: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor | None = None) -> torch.Tensor:
    """The KDA log decay -exp(A_log) * softplus(g_raw + dt_bias), in float32 (or float64).

    g_raw: [..., H, K]; A_log: any shape with H elements (one decay rate per head); dt_bias: H*K.
    """
    H, K = g_raw.shape[-2:]
    dtype = torch.float64 if g_raw.dtype == torch.float64 else torch.float32
    x = g_raw.to(dtype)
    if dt_bias is not None:
        x = x + dt_bias.to(dtype).reshape(H, K)
    return -A_log.to(dtype).reshape(H, 1).exp() * F.softplus(x)


def prepare_inputs(q, k, g, use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False,
                   A_log=None, dt_bias=None):
    """Apply the optional in-kernel steps (q/k L2 norm, gate activation) in PyTorch."""
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    if use_gate_in_kernel:
        if A_log is None:
            raise ValueError("use_gate_in_kernel=True needs A_log (and optionally dt_bias)")
        g = kda_gate(g, A_log, dt_bias)
    return q, k, g


def check_shapes(q, k, v, g, beta, initial_state, cu_seqlens):
    """Raise a ValueError naming the argument whose shape breaks the chunk_kda contract."""
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, K], got shape {tuple(q.shape)}")
    B, T, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must match q {tuple(q.shape)}, got {tuple(k.shape)}")
    if g.shape != q.shape:
        raise ValueError(f"g must match q {tuple(q.shape)}, got {tuple(g.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] with B, T, H = {B, T, H}, got {tuple(v.shape)}")
    if beta.shape != q.shape[:3]:
        raise ValueError(f"beta must be [B, T, H] = {(B, T, H)}, got {tuple(beta.shape)}")
    N = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"cu_seqlens needs a packed batch with B == 1, got B = {B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cached_on_values(cu_seqlens, _bounds) != [0, T]:
            raise ValueError(f"cu_seqlens must run from 0 to T = {T}, got {cu_seqlens.tolist()}")
        N = cu_seqlens.numel() - 1
    if initial_state is not None and initial_state.shape != (N, H, K, v.shape[-1]):
        raise ValueError(f"initial_state must be [N, H, K, V] = {(N, H, K, v.shape[-1])}, "
                         f"got {tuple(initial_state.shape)}")
    return N


def accum_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (the oracle); everything else accumulates in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def padded_index(cu_seqlens: torch.Tensor, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices that lay packed sequences out as right-padded rows: (index [N, width] into the
    packed row extended by one zero row at position T, valid [N, width] bool). width defaults to the
    longest sequence."""
    cu = cu_seqlens.long()
    starts, lengths = cu[:-1], cu[1:] - cu[:-1]
    if width is None:
        width = int(lengths.max()) if lengths.numel() else 0
    pos = torch.arange(width, device=cu.device)
    valid = pos[None, :] < lengths[:, None]
    return torch.where(valid, starts[:, None] + pos[None, :], cu[-1]), valid


def to_padded(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Packed [1, T, ...] -> padded [N, width, ...] (zeros after each sequence), by one gather."""
    rows = torch.cat([x[0], x.new_zeros(1, *x.shape[2:])])                 # [T + 1, ...]
    return rows[index]
