"""Small building blocks shared by the attention and FFN layers."""
import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, scaled by a learned weight."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class GatedRMSNorm(RMSNorm):
    """RMSNorm(x) * sigmoid(gate): the KDA output norm, gated per channel by a low-rank projection."""

    def forward(self, x, gate):
        return super().forward(x) * torch.sigmoid(gate.float()).to(x.dtype)


def causal_conv(x, weight, conv_state=None, seq_idx=None):
    """Depthwise causal convolution followed by SiLU.

    x: [B, T, C]; weight: [C, 1, W]; conv_state: [B, C, W-1], the inputs just before x (zeros if None);
    seq_idx: [B, T] sequence id of each token for packed batches (taps never cross a boundary).
    Returns (silu(conv(x)) [B, T, C], new conv_state [B, C, W-1]).
    """
    B, T, C = x.shape
    W = weight.shape[-1]
    left = x.new_zeros(B, W - 1, C) if conv_state is None else conv_state.transpose(1, 2).to(x.dtype)
    padded = torch.cat([left, x], dim=1)                                    # [B, W-1+T, C]
    w = weight.to(x.dtype)
    if seq_idx is None:
        out = F.conv1d(padded.transpose(1, 2), w, groups=C).transpose(1, 2)
    else:
        out = x * w[:, 0, W - 1]
        for shift in range(1, W):
            same_seq = torch.zeros_like(seq_idx, dtype=torch.bool)
            same_seq[:, shift:] = seq_idx[:, shift:] == seq_idx[:, :-shift]
            shifted = padded[:, W - 1 - shift: W - 1 - shift + T]
            out = out + torch.where(same_seq[..., None], shifted, 0) * w[:, 0, W - 1 - shift]
    return F.silu(out), padded[:, T:].transpose(1, 2).contiguous()


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
