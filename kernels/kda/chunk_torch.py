"""Chunkwise KDA in PyTorch: the WY/UT form that the Triton kernels implement, as plain tensor code.

Within a chunk of C tokens, with G the within-chunk cumulative log decay ([C, K]) and S0 the
state entering the chunk, the delta rule's corrected values u satisfy a unit lower-triangular
system (all terms per head):

    A[i, j]   = beta_i * sum_c k_i[c] k_j[c] exp(G_i[c] - G_j[c])          j < i
    (I + A) u = beta * v - beta * (k * exp(G)) S0
              = U - W S0,   U = T (beta v),  W = T (beta k exp(G)),  T = (I + A)^-1
    o         = scale * ((q * exp(G)) S0 + Aqk u),   Aqk[i, j] = sum_c q_i k_j exp(G_i - G_j), j <= i
    S_next    = exp(G_C) * S0 + (k * exp(G_C - G))^T u

U, W and the two intra-chunk matrices need no state, so they are computed for every chunk at once;
only the short state recurrence across chunks is sequential. Autograd differentiates all of it.
"""
import torch

from .common import accum_dtype, check_shapes, prepare_inputs

CHUNK_SIZE = 64


def _pad_to_chunks(x, chunk_size):
    """[B, T, ...] -> [B, NC * C, ...] with zeros; zero k, v, beta, q and g leave the state as is."""
    pad = -x.shape[1] % chunk_size
    if pad == 0:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)


def _unpack(x, cu_seqlens, max_len):
    """Packed [1, T, ...] -> padded [N, max_len, ...]."""
    bounds = cu_seqlens.tolist()
    out = x.new_zeros(len(bounds) - 1, max_len, *x.shape[2:])
    for n in range(len(bounds) - 1):
        out[n, : bounds[n + 1] - bounds[n]] = x[0, bounds[n]: bounds[n + 1]]
    return out


def _repack(x, cu_seqlens):
    """Padded [N, max_len, ...] -> packed [1, T, ...]."""
    bounds = cu_seqlens.tolist()
    return torch.cat([x[n, : bounds[n + 1] - bounds[n]] for n in range(len(bounds) - 1)])[None]


def _chunk_kda_batched(q, k, v, g, beta, scale, initial_state, chunk_size):
    """Dense batch, T a multiple of chunk_size. q, k, g: [B, T, H, K]; v: [B, T, H, V]."""
    B, T, H, K = q.shape
    V, C = v.shape[-1], chunk_size
    NC = T // C
    # [B, T, H, D] -> [B, H, NC, C, D]
    q, k, v, g = (x.reshape(B, NC, C, H, -1).permute(0, 3, 1, 2, 4) for x in (q, k, v, g))
    beta = beta.reshape(B, NC, C, H).permute(0, 3, 1, 2)[..., None]        # [B, H, NC, C, 1]

    G = g.cumsum(dim=-2)                                                    # [B, H, NC, C, K]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # exp(G_i - G_j) for j <= i, zero above the diagonal: [B, H, NC, C, C, K]
    diff = G[..., :, None, :] - G[..., None, :, :]
    decay = torch.where(causal[:, :, None], diff, diff.new_tensor(float("-inf"))).exp()

    A = torch.einsum("...ic,...jc,...ijc->...ij", k, k, decay) * beta
    A = A.masked_fill(causal.logical_not().logical_or(torch.eye(C, dtype=torch.bool, device=q.device)), 0)
    Aqk = torch.einsum("...ic,...jc,...ijc->...ij", q, k, decay)            # [B, H, NC, C, C]
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    U = torch.linalg.solve_triangular(eye + A, beta * v, upper=False, unitriangular=True)
    W = torch.linalg.solve_triangular(eye + A, beta * k * G.exp(), upper=False, unitriangular=True)

    q_decayed = q * G.exp() * scale                                         # [B, H, NC, C, K]
    k_to_end = k * (G[..., -1:, :] - G).exp()                               # [B, H, NC, C, K]
    chunk_decay = G[..., -1, :].exp()                                       # [B, H, NC, K]

    state = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(q.dtype)
    outputs = []
    for n in range(NC):
        u = U[:, :, n] - W[:, :, n] @ state                                 # [B, H, C, V]
        outputs.append(q_decayed[:, :, n] @ state + (Aqk[:, :, n] * scale) @ u)
        state = chunk_decay[:, :, n, :, None] * state + k_to_end[:, :, n].transpose(-1, -2) @ u
    o = torch.stack(outputs, dim=2)                                         # [B, H, NC, C, V]
    return o.permute(0, 2, 3, 1, 4).reshape(B, T, H, V), state


def chunk_kda_torch(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                    cu_seqlens=None, use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False,
                    A_log=None, dt_bias=None, chunk_size=None):
    """Chunkwise KDA (chunk_kda contract) in PyTorch; differentiable in every input.

    chunk_size defaults to 64, or to the next power of two (at least 16) above the longest sequence
    when all are shorter: the result is the same, and short RL responses do not pay for 64-token chunks.
    """
    check_shapes(q, k, v, g, beta, initial_state, cu_seqlens)
    q, k, g = prepare_inputs(q, k, g, use_qk_l2norm_in_kernel, use_gate_in_kernel, A_log, dt_bias)
    B, T, H, K = q.shape
    out_dtype, dtype = v.dtype, accum_dtype(v)
    scale = K ** -0.5 if scale is None else scale
    q, k, v, g, beta = (x.to(dtype) for x in (q, k, v, g, beta))

    max_len = T if cu_seqlens is None else int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    if cu_seqlens is not None:
        q, k, v, g, beta = (_unpack(x, cu_seqlens, max_len) for x in (q, k, v, g, beta))
    if chunk_size is None:
        chunk_size = min(CHUNK_SIZE, max(16, 1 << max(max_len - 1, 1).bit_length()))
    q, k, v, g, beta = (_pad_to_chunks(x, chunk_size) for x in (q, k, v, g, beta))

    o, final_state = _chunk_kda_batched(q, k, v, g, beta, scale, initial_state, chunk_size)
    o = _repack(o, cu_seqlens) if cu_seqlens is not None else o[:, :T]
    return o.to(out_dtype), (final_state if output_final_state else None)
