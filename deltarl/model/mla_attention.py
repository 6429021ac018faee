"""Multi-Head Latent Attention without positional encoding (Kimi Linear's full-attention layers)."""
import torch
import torch.nn.functional as F
from torch import nn

from deltarl.kernels.kda import padded_index, to_padded
from deltarl.kernels.moba import masked_moba_attention, moba_attention

from .layers import RMSNorm
from .moba import moba_decode_step


class KimiMLAAttention(nn.Module):
    """Keys and values are expanded from a per-token latent c (kv_lora_rank) plus one k_pe shared by all
    heads; only c and k_pe are cached. No rotary embedding: position comes from the KDA layers."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.nope_dim, self.rope_dim = config.qk_nope_head_dim, config.qk_rope_head_dim
        self.v_head_dim, self.kv_lora_rank = config.v_head_dim, config.kv_lora_rank
        self.scale = (self.nope_dim + self.rope_dim) ** -0.5
        self.moba = config.moba_block(layer_idx)      # (block_size, top_k) of a MoBA layer, else None
        H = self.num_heads
        self.q_proj = nn.Linear(config.hidden_size, H * (self.nope_dim + self.rope_dim), bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(config.hidden_size, self.kv_lora_rank + self.rope_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank, eps=config.rms_norm_eps)
        self.kv_b_proj = nn.Linear(self.kv_lora_rank, H * (self.nope_dim + self.v_head_dim), bias=False)
        self.o_proj = nn.Linear(H * self.v_head_dim, config.hidden_size, bias=False)

    def _mask(self, layout, T, L, device):
        """Boolean [B or 1, 1, T, L] of allowed (query, key) pairs; None when plain causal (T == L) or
        everything (one new token) is allowed, so SDPA never sees a mask it does not need."""
        valid = layout.cache.valid if layout.cache is not None else layout.valid
        unpadded = valid is None or bool(valid.all())
        if layout.seq_idx is None and unpadded and (T == L or T == 1):
            return None
        q_pos = torch.arange(L - T, L, device=device)
        allowed = q_pos[:, None] >= torch.arange(L, device=device)[None, :]   # [T, L] causal
        allowed = allowed[None]
        if layout.seq_idx is not None:              # packed: stay inside each sequence
            allowed = allowed & (layout.seq_idx[:, :, None] == layout.seq_idx[:, None, :])
        if valid is not None:                       # padded: never attend to pads (pads see themselves)
            is_self = q_pos[:, None] == torch.arange(L, device=device)[None, :]
            allowed = allowed & (valid[:, None, :] | is_self[None])
        return allowed[:, None]

    def forward(self, x, layout):
        B, T, _ = x.shape
        H = self.num_heads
        q = self.q_proj(x).view(B, T, H, self.nope_dim + self.rope_dim)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        latent = self.kv_a_layernorm(latent)
        if layout.cache is not None:
            latent, k_pe = layout.cache.update_mla(self.layer_idx, latent, k_pe)
        L = latent.shape[1]
        if layout.cache is not None and T == 1:        # a decode step: attend in the latent space
            if self.moba is not None:
                o = moba_decode_step(self, q, latent, k_pe, layout.cache)
            else:
                o = self._latent_attention(q, latent, k_pe, self._mask(layout, T, L, x.device))
            return self.o_proj(o.reshape(B, T, H * self.v_head_dim))
        kv = self.kv_b_proj(latent).view(B, L, H, self.nope_dim + self.v_head_dim)
        k_nope, v = kv.split([self.nope_dim, self.v_head_dim], dim=-1)
        k = torch.cat([k_nope, k_pe[:, :, None].expand(B, L, H, self.rope_dim)], dim=-1)
        if self.moba is not None:
            o = self._moba_attention(q, k, v, layout)
            return self.o_proj(o.reshape(B, T, H * self.v_head_dim))
        index = None
        if layout.seq_idx is not None and layout.cache is None and layout.valid is None:
            index, valid = padded_index(layout.cu_seqlens)
            if index.numel() * index.shape[1] > T * T:    # padding would cost more than the [T, T] mask
                index = None
        if index is not None:
            o = self._padded_attention(q, k, v, index, valid)
        else:
            mask = self._mask(layout, T, L, x.device)
            # [B, T, H, D] -> [B, H, T, D]
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=mask, is_causal=mask is None and T > 1,
                                               scale=self.scale).transpose(1, 2)
        return self.o_proj(o.reshape(B, T, H * self.v_head_dim))

    def _moba_attention(self, q, k, v, layout):
        """MoBA (`deltarl.kernels.moba`) for a packed training row; for rows of one sequence each (padded
        or not) their real tokens are packed into one row first. Only new tokens after a cached history
        (a prefill in chunks) take MoBA's boolean mask over [T, L].
        q [B, T, H, Dk]; k [B, L, H, Dk]; v [B, L, H, Dv] -> [B, T, H, Dv]."""
        block_size, top_k = self.moba
        if layout.seq_idx is not None:
            if layout.cache is not None or layout.valid is not None:
                raise ValueError("MoBA takes packed sequences (cu_seqlens) without padding or a cache")
            return moba_attention(q, k, v, layout.cu_seqlens, block_size, top_k, self.scale)
        B, T, L = q.shape[0], q.shape[1], k.shape[1]
        valid = layout.cache.valid if layout.cache is not None else layout.valid
        if valid is None:
            valid = torch.ones(B, L, dtype=torch.bool, device=q.device)
        if T == L:                                  # no history: pack the rows' real tokens
            lengths = valid.sum(1)
            cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
            o = moba_attention(q[valid][None], k[valid][None], v[valid][None], cu_seqlens, block_size, top_k,
                               self.scale)                                                   # [1, N, H, Dv]
            return o.new_zeros(B, T, *o.shape[2:]).index_put((valid,), o[0])                 # pads: zeros
        pos = torch.where(valid, valid.long().cumsum(1) - 1, -1)      # [B, L] position in the sequence
        return masked_moba_attention(q, k, v, pos[:, L - T:], pos, block_size, top_k, self.scale)

    def _latent_attention(self, q, latent, k_pe, mask):
        """Attention of a few new tokens over the cached latents without expanding per-head keys and
        values for the whole context: the key up-projection folds into the query (q_nope W_k . c equals
        q_nope . W_k c) and the value up-projection applies after the weighted sum of latents. Per step
        this reads the cache once instead of recomputing L x H x (nope + v) keys and values.
        q [B, T, H, nope + rope]; latent [B, L, R]; k_pe [B, L, rope]; mask [B or 1, 1 or H, T, L] or None."""
        q_latent, q_pe = self.latent_query(q)
        scores = (torch.einsum("bhtr,blr->bhtl", q_latent, latent)
                  + torch.einsum("bthd,bld->bhtl", q_pe, k_pe)) * self.scale      # [B, H, T, L]
        if mask is not None:
            scores = scores.masked_fill(mask.logical_not(), float("-inf"))
        weights = scores.to(torch.promote_types(scores.dtype, torch.float32)).softmax(dim=-1).to(latent.dtype)
        o_latent = torch.einsum("bhtl,blr->bhtr", weights, latent)               # [B, H, T, R]
        return torch.einsum("bhtr,hdr->bthd", o_latent, self._up_weights()[1])  # [B, T, H, v]

    def latent_query(self, q):
        """q [B, T, H, nope + rope] -> (q_latent [B, H, T, R], q_pe [B, T, H, rope]): q_latent . c equals
        the nope part of q . k for a latent c, as kv_b's key block folds into the query."""
        q_nope, q_pe = q.split([self.nope_dim, self.rope_dim], dim=-1)
        return torch.einsum("bthd,hdr->bhtr", q_nope, self._up_weights()[0]), q_pe

    def _up_weights(self):
        """kv_b_proj's weight as its key and value blocks: [H, nope, R], [H, v, R]."""
        H, R = self.num_heads, self.kv_lora_rank
        return self.kv_b_proj.weight.view(H, self.nope_dim + self.v_head_dim, R).split(
            [self.nope_dim, self.v_head_dim], dim=1)

    def _padded_attention(self, q, k, v, index, valid):
        """Causal attention within each packed sequence: the sequences are gathered into right-padded
        rows [N, L] (`kernels.kda.padded_index`; a causal mask then never lets a real token see a pad),
        attended as a batch, and the real rows gathered back: the cost is N L^2 rather than T^2 for a
        packed row of T tokens, and no [T, T] mask is built."""
        rows = [to_padded(t, index).transpose(1, 2) for t in (q, k, v)]               # [N, H, L, D]
        o = F.scaled_dot_product_attention(*rows, is_causal=True, scale=self.scale)   # [N, H, L, Dv]
        return o.transpose(1, 2)[valid][None]                                        # [1, T, H, Dv]
