"""The KDA oracle: the gated delta rule run one token at a time, exactly as written.

    S_t = diag(exp(g_t)) S_{t-1}
    S_t = S_t + beta_t k_t (v_t - S_t^T k_t)^T        S: [K, V] per head
    o_t = S_t^T (scale * q_t)

Slow and obviously right; every fast path is held to it (in float64 for tight tolerances).
"""
import torch

from .common import accum_dtype, check_shapes, prepare_inputs


def _recurrence(q, k, v, g, beta, scale, state):
    """One sequence. q, k, g: [T, H, K]; v: [T, H, V]; beta: [T, H]; state: [H, K, V]."""
    outputs = []
    for t in range(q.shape[0]):
        state = state * g[t].exp()[:, :, None]
        predicted = torch.einsum("hk,hkv->hv", k[t], state)
        delta = beta[t][:, None] * (v[t] - predicted)                      # [H, V]
        state = state + k[t][:, :, None] * delta[:, None, :]
        outputs.append(torch.einsum("hk,hkv->hv", q[t] * scale, state))
    o = torch.stack(outputs) if outputs else v.new_zeros(v.shape)
    return o, state


def naive_recurrent_kda(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                        cu_seqlens=None, use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False,
                        A_log=None, dt_bias=None):
    """Reference KDA with the chunk_kda contract: returns (o [B, T, H, V] in v's dtype, final state
    [N, H, K, V] float32/float64 or None)."""
    N = check_shapes(q, k, v, g, beta, initial_state, cu_seqlens)
    q, k, g = prepare_inputs(q, k, g, use_qk_l2norm_in_kernel, use_gate_in_kernel, A_log, dt_bias)
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype, dtype = v.dtype, accum_dtype(v)
    scale = K ** -0.5 if scale is None else scale
    q, k, v, g, beta = (x.to(dtype) for x in (q, k, v, g, beta))

    if cu_seqlens is None:
        spans = [(b, 0, T) for b in range(B)]
    else:
        bounds = cu_seqlens.tolist()
        spans = [(0, bounds[n], bounds[n + 1]) for n in range(N)]

    outputs, finals = [], []
    for n, (b, start, end) in enumerate(spans):
        state = q.new_zeros(H, K, V) if initial_state is None else initial_state[n].to(dtype)
        o, state = _recurrence(q[b, start:end], k[b, start:end], v[b, start:end],
                               g[b, start:end], beta[b, start:end], scale, state)
        outputs.append(o)
        finals.append(state)
    o = torch.cat(outputs).reshape(B, T, H, V)
    final_state = torch.stack(finals) if output_final_state else None
    return o.to(out_dtype), final_state
