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

The pairwise decays exp(G_i - G_j) are formed exactly (never as exp(G_i) * exp(-G_j), which
overflows for strong decays), so the [C, C, K] tensor per chunk and head is the main cost: packed
batches of short sequences (RL responses) are therefore gathered into a padded [N, L] layout with
a chunk just long enough for the longest sequence.
"""
import torch

from .common import accum_dtype, check_shapes, padded_index, prepare_inputs, to_padded

CHUNK_SIZE = 64
CPU_CHUNK_SIZE = 16     # on a CPU the [C, C, K] block dominates: 16 trains 64 x 70-token batches 5-8x faster


def _pad_to_chunks(x, chunk_size):
    """[B, T, ...] -> [B, NC * C, ...] with zeros; zero k, v, beta, q and g leave the state as is."""
    pad = -x.shape[1] % chunk_size
    if pad == 0:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)


def _repack(x, valid):
    """Padded [N, width, ...] -> packed [1, T, ...]: the valid rows in order."""
    return x[valid][None]


def _intra_chunk(q, k, G, beta):
    """A (strictly lower, times beta_i) and Aqk (lower with the diagonal): [..., C, C] each.

    With D[i, j, c] = exp(G_i[c] - G_j[c]) (zero above the diagonal) and kD[i, j, c] = D[i, j, c] k_j[c],
    row i of A is kD[i] @ k_i and row i of Aqk is kD[i] @ q_i: one elementwise product over the
    [C, C, K] block and one batched matrix-vector product for both."""
    C = G.shape[-2]
    causal = torch.ones(C, C, dtype=torch.bool, device=G.device).tril()
    diff = G[..., :, None, :] - G[..., None, :, :]                          # [..., C, C, K]
    decay = torch.where(causal[:, :, None], diff, diff.new_tensor(float("-inf"))).exp()
    kD = decay * k[..., None, :, :]                                         # [..., i, j, K]
    both = kD @ torch.stack([k, q], dim=-1)                                 # [..., i, j, 2]
    strict = causal.logical_and(torch.eye(C, dtype=torch.bool, device=G.device).logical_not())
    A = torch.where(strict, both[..., 0] * beta, 0)
    return A, both[..., 1]


def _chunk_kda_batched(q, k, v, g, beta, scale, initial_state, chunk_size, need_state=True):
    """Dense batch, T a multiple of chunk_size. q, k, g: [B, T, H, K]; v: [B, T, H, V].
    Returns (o, final state), the state None when not need_state and there is one chunk."""
    B, T, H, K = q.shape
    V, C = v.shape[-1], chunk_size
    NC = T // C
    # [B, T, H, D] -> [B, H, NC, C, D]
    q, k, v, g = (x.reshape(B, NC, C, H, -1).permute(0, 3, 1, 2, 4) for x in (q, k, v, g))
    beta = beta.reshape(B, NC, C, H).permute(0, 3, 1, 2)[..., None]        # [B, H, NC, C, 1]

    G = g.cumsum(dim=-2)                                                    # [B, H, NC, C, K]
    A, Aqk = _intra_chunk(q, k, G, beta)                                    # [B, H, NC, C, C]
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    G_exp = G.exp()
    rhs = torch.cat([beta * v, beta * k * G_exp], dim=-1)                  # [B, H, NC, C, V + K]
    UW = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
    U, W = UW[..., :V], UW[..., V:]

    Aqk = Aqk * scale
    if NC == 1 and initial_state is None:       # one chunk from a zero state: no recurrence
        o = Aqk[:, :, 0] @ U[:, :, 0]                                       # [B, H, C, V]
        state = None
        if need_state:
            state = (k[:, :, 0] * (G[:, :, 0, -1:, :] - G[:, :, 0]).exp()).transpose(-1, -2) @ U[:, :, 0]
        return o.permute(0, 2, 1, 3), state
    q_decayed = q * G_exp * scale                                           # [B, H, NC, C, K]
    k_to_end = k * (G[..., -1:, :] - G).exp()                               # [B, H, NC, C, K]
    chunk_decay = G[..., -1, :].exp()                                       # [B, H, NC, K]

    state = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(q.dtype)
    outputs = []
    for n in range(NC):
        u = U[:, :, n] - W[:, :, n] @ state                                 # [B, H, C, V]
        outputs.append(q_decayed[:, :, n] @ state + Aqk[:, :, n] @ u)
        state = chunk_decay[:, :, n, :, None] * state + k_to_end[:, :, n].transpose(-1, -2) @ u
    o = torch.stack(outputs, dim=2)                                         # [B, H, NC, C, V]
    return o.permute(0, 2, 3, 1, 4).reshape(B, T, H, V), state


def chunk_kda_torch(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                    cu_seqlens=None, use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False,
                    A_log=None, dt_bias=None, chunk_size=None):
    """Chunkwise KDA (chunk_kda contract) in PyTorch; differentiable in every input.

    chunk_size defaults to 64 (16 for CPU tensors), or to the longest sequence's length when all are
    shorter: the result is the same, and short RL responses do not pay for 64-token chunks. Packed sequences
    (cu_seqlens) are gathered into a padded batch by index and scattered back the same way.
    """
    check_shapes(q, k, v, g, beta, initial_state, cu_seqlens)
    q, k, g = prepare_inputs(q, k, g, use_qk_l2norm_in_kernel, use_gate_in_kernel, A_log, dt_bias)
    B, T, H, K = q.shape
    out_dtype, dtype = v.dtype, accum_dtype(v)
    scale = K ** -0.5 if scale is None else scale
    q, k, v, g, beta = (x.to(dtype) for x in (q, k, v, g, beta))

    max_len = T if cu_seqlens is None else int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    if chunk_size is None:
        chunk_size = min(CHUNK_SIZE if q.is_cuda else CPU_CHUNK_SIZE, max(max_len, 1))
    if cu_seqlens is not None:
        width = -(-max(max_len, 1) // chunk_size) * chunk_size
        index, valid = padded_index(cu_seqlens, width)
        q, k, v, g, beta = (to_padded(x, index) for x in (q, k, v, g, beta))
    else:
        q, k, v, g, beta = (_pad_to_chunks(x, chunk_size) for x in (q, k, v, g, beta))

    o, final_state = _chunk_kda_batched(q, k, v, g, beta, scale, initial_state, chunk_size,
                                        need_state=output_final_state)
    o = _repack(o, valid) if cu_seqlens is not None else o[:, :T]
    return o.to(out_dtype), (final_state if output_final_state else None)
