"""Kimi Delta Attention layer: gated delta rule with per-channel decay and a fixed-size state."""
import torch
from torch import nn

from deltarl.kernels.kda import chunk_kda, fused_recurrent_kda, kda_gate

from .cache import KDAState
from .layers import GatedRMSNorm, causal_conv


class KimiDeltaAttention(nn.Module):
    """q, k, v = silu(short causal conv(W x)); o = KDA(l2norm(q), l2norm(k), v, gate, beta);
    out = o_proj(rmsnorm(o) * sigmoid(g_b(g_a(x)))). Parameter names follow vLLM's loader."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        lac = config.linear_attn_config
        self.layer_idx = layer_idx
        self.num_heads, self.head_dim = lac["num_heads"], lac["head_dim"]
        self.conv_size = lac["short_conv_kernel_size"]
        hidden, H, D = config.hidden_size, self.num_heads, self.head_dim
        self.q_proj = nn.Linear(hidden, H * D, bias=False)
        self.k_proj = nn.Linear(hidden, H * D, bias=False)
        self.v_proj = nn.Linear(hidden, H * D, bias=False)
        self.q_conv1d = nn.Conv1d(H * D, H * D, self.conv_size, groups=H * D, bias=False)
        self.k_conv1d = nn.Conv1d(H * D, H * D, self.conv_size, groups=H * D, bias=False)
        self.v_conv1d = nn.Conv1d(H * D, H * D, self.conv_size, groups=H * D, bias=False)
        self.f_a_proj = nn.Linear(hidden, D, bias=False)
        self.f_b_proj = nn.Linear(D, H * D, bias=False)
        self.dt_bias = nn.Parameter(torch.empty(H * D))
        self.A_log = nn.Parameter(torch.empty(1, 1, H, 1))
        self.b_proj = nn.Linear(hidden, H, bias=False)
        self.g_a_proj = nn.Linear(hidden, D, bias=False)
        self.g_b_proj = nn.Linear(D, H * D, bias=False)
        self.o_norm = GatedRMSNorm(D, eps=config.rms_norm_eps)
        self.o_proj = nn.Linear(H * D, hidden, bias=False)

    def _conv_qkv(self, x, layout, state):
        """Project and convolve q, k, v: each [B, T, H*D]; also returns the new conv state."""
        convs = (self.q_conv1d, self.k_conv1d, self.v_conv1d)
        outs, new_states = [], []
        for i, (proj, conv) in enumerate(zip((self.q_proj, self.k_proj, self.v_proj), convs)):
            y = proj(x)
            if layout.valid is not None:   # pads feed zeros, exactly like the conv's causal padding
                y = torch.where(layout.valid[..., None], y, 0)
            y, s = causal_conv(y, conv.weight, None if state is None else state.conv[:, i], layout.seq_idx)
            outs.append(y)
            new_states.append(s)
        return outs, torch.stack(new_states, dim=1)

    def forward(self, x, layout):
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        cache = layout.cache
        state = cache.layers[self.layer_idx] if cache is not None else None
        (q, k, v), conv_state = self._conv_qkv(x, layout, state)
        q, k, v = (t.view(B, T, H, D) for t in (q, k, v))
        g = self.f_b_proj(self.f_a_proj(x)).view(B, T, H, D)
        beta = torch.sigmoid(self.b_proj(x).float())                        # [B, T, H]

        kda_kwargs = dict(use_qk_l2norm_in_kernel=True)
        if layout.valid is None:     # gate computed inside the kernel
            kda_kwargs.update(use_gate_in_kernel=True, A_log=self.A_log, dt_bias=self.dt_bias)
        else:                        # pads get no decay and no write: the state passes through them
            g = torch.where(layout.valid[..., None, None], kda_gate(g, self.A_log, self.dt_bias), 0)
            beta = torch.where(layout.valid[..., None], beta, 0)
        initial = state.recurrent if state is not None else None
        # one decoding token: the Triton recurrent kernel on CUDA; elsewhere the chunk path, which
        # steps a whole batch at once (the reference recurrence loops over the sequences)
        kda = fused_recurrent_kda if (state is not None and T == 1 and q.is_cuda) else chunk_kda
        o, final = kda(q, k, v, g, beta, initial_state=initial, output_final_state=cache is not None,
                       cu_seqlens=layout.cu_seqlens, **kda_kwargs)
        if cache is not None:
            cache.layers[self.layer_idx] = KDAState(conv_state, final.float())

        gate = self.g_b_proj(self.g_a_proj(x)).view(B, T, H, D)
        o = self.o_norm(o.to(x.dtype), gate)
        return self.o_proj(o.reshape(B, T, H * D))
