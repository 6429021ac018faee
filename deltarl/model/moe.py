"""Mixture of experts as in Kimi Linear (DeepSeek-V3 style routing).

Sigmoid (or softmax) router scores; experts are *chosen* by score + e_score_correction_bias (a
load-balancing bias that is not trained by gradients) but *weighted* by the raw score, optionally
renormalised over the chosen top-k and scaled by routed_scaling_factor; shared experts see every token.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .layers import MLP


class Expert(nn.Module):
    """One routed expert; w1/w3/w2 are the checkpoint names of gate/up/down."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.w1 = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.w3 = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.w2 = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Router(nn.Module):
    def __init__(self, hidden_size: int, num_experts: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(num_experts))

    def forward(self, x):
        return F.linear(x.float(), self.weight.float())


class KimiMoE(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.gate = Router(config.hidden_size, config.num_experts)
        self.experts = nn.ModuleList(Expert(config.hidden_size, config.moe_intermediate_size)
                                     for _ in range(config.num_experts))
        self.shared_experts = MLP(config.hidden_size, config.moe_intermediate_size * config.num_shared_experts)

    def route(self, x):
        """x: [N, hidden] -> (expert ids [N, k], weights [N, k] float32)."""
        cfg = self.config
        logits = self.gate(x)
        scores = logits.sigmoid() if cfg.moe_router_activation_func == "sigmoid" else logits.softmax(-1)
        choice = scores + self.gate.e_score_correction_bias.float()
        if cfg.use_grouped_topk and cfg.num_expert_group > 1:
            # keep the topk_group groups whose two best experts score highest
            groups = choice.view(x.shape[0], cfg.num_expert_group, -1)       # [N, G, E/G]
            group_score = groups.topk(min(2, groups.shape[-1]), dim=-1).values.sum(-1)
            keep = torch.zeros_like(group_score).scatter_(1, group_score.topk(cfg.topk_group, -1).indices, 1)
            choice = groups.masked_fill(keep[..., None] == 0, float("-inf")).view_as(choice)
        ids = choice.topk(cfg.num_experts_per_token, dim=-1).indices
        weights = scores.gather(1, ids)
        if cfg.moe_renormalize:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return ids, weights * cfg.routed_scaling_factor

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])                                        # [N, hidden]
        ids, weights = self.route(x)
        out = torch.zeros_like(x, dtype=torch.float32)
        for e in ids.unique().tolist():
            token, slot = (ids == e).nonzero(as_tuple=True)
            y = self.experts[e](x[token]).float() * weights[token, slot, None]
            out.index_add_(0, token, y)
        return (out.to(x.dtype) + self.shared_experts(x)).reshape(shape)
