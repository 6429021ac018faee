"""KimiLinearForCausalLM: the hybrid KDA/MLA decoder as a transformers model.

Parameter names are the released checkpoints' (and vLLM's loader's), so `save_pretrained` output loads in
vLLM 0.26 natively and `from_pretrained` reads the released weights.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .batch import TokenLayout, seq_idx_from_cu_seqlens
from .cache import KimiLinearCache
from .config import KimiLinearConfig
from .kda_attention import KimiDeltaAttention
from .layers import MLP, RMSNorm
from .mla_attention import KimiMLAAttention
from .moe import KimiMoE, Router


class KimiDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        attention = KimiDeltaAttention if config.is_kda_layer(layer_idx) else KimiMLAAttention
        self.self_attn = attention(config, layer_idx)
        if config.is_moe_layer(layer_idx):
            self.block_sparse_moe = KimiMoE(config)
        else:
            self.mlp = MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, layout):
        x = x + self.self_attn(self.input_layernorm(x), layout)
        ffn = self.block_sparse_moe if hasattr(self, "block_sparse_moe") else self.mlp
        return x + ffn(self.post_attention_layernorm(x))


class KimiLinearPreTrainedModel(PreTrainedModel):
    config_class = KimiLinearConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["KimiDecoderLayer"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.Conv1d):   # short convs: start near an identity on the current token
            nn.init.normal_(module.weight, std=std)
            module.weight[:, 0, -1] += 1.0
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, Router):
            nn.init.normal_(module.weight, std=std)
            module.e_score_correction_bias.zero_()
        elif isinstance(module, KimiDeltaAttention):
            # per-head decay rates A in [1, 16]; dt = softplus(dt_bias) log-uniform in [1e-3, 1e-1]
            module.A_log.copy_(torch.empty_like(module.A_log).uniform_(1, 16).log())
            dt = torch.exp(torch.empty_like(module.dt_bias).uniform_(math.log(1e-3), math.log(1e-1)))
            module.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))


class KimiLinearModel(KimiLinearPreTrainedModel):
    def __init__(self, config: KimiLinearConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(KimiDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, use_cache=None,
                cu_seqlens=None, inputs_embeds=None, **kwargs):
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        cache = past_key_values
        if use_cache and cache is None:
            cache = KimiLinearCache(self.config)
        layout = _layout(attention_mask, cu_seqlens, cache, B, T, x.device)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = self._gradient_checkpointing_func(layer.__call__, x, layout)
            else:
                x = layer(x, layout)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), past_key_values=cache)


def _layout(attention_mask, cu_seqlens, cache, B, T, device):
    """Build the TokenLayout of a forward pass and record the new tokens in the cache."""
    valid = None
    if attention_mask is not None:
        valid = attention_mask[:, -T:].bool()
        if bool(valid.all()) and (cache is None or cache.valid is None or bool(cache.valid.all())):
            valid = None
    seq_idx = None
    if cu_seqlens is not None:
        if cache is not None:
            raise ValueError("cu_seqlens (packed sequences) is for training passes; it cannot fill a decode cache")
        if B != 1:
            raise ValueError(f"cu_seqlens needs the sequences packed into one row (batch size 1), got {B}")
        cu_seqlens = cu_seqlens.to(device=device, dtype=torch.int32)
        seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, T)
    if cache is not None:
        was_padded = cache.valid is not None and not bool(cache.valid.all())
        cache.append_valid(torch.ones(B, T, dtype=torch.bool, device=device) if valid is None else valid)
        if was_padded and valid is None:
            valid = torch.ones(B, T, dtype=torch.bool, device=device)
    return TokenLayout(valid=valid, cu_seqlens=cu_seqlens, seq_idx=seq_idx, cache=cache)


class KimiLinearForCausalLM(KimiLinearPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: KimiLinearConfig):
        super().__init__(config)
        self.model = KimiLinearModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False       # the hybrid cache is made in prepare_inputs_for_generation

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, use_cache=None,
                cu_seqlens=None, labels=None, logits_to_keep=0, inputs_embeds=None, skip_logits=False, **kwargs):
        """Logits [B, T, vocab] (or the last `logits_to_keep`); with `labels`, the mean next-token loss.

        `skip_logits=True` stops before `lm_head`: logits is None and `hidden_states` is a 1-tuple of the
        final (normed) hidden states [B, T, H], for callers that project a chunk of rows at a time so the
        [B, T, vocab] logits never exist (`rl.logprobs`); through a DeepSpeed engine's forward, too."""
        out = self.model(input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                         use_cache=use_cache, cu_seqlens=cu_seqlens, inputs_embeds=inputs_embeds)
        hidden = out.last_hidden_state
        if skip_logits:
            if labels is not None:
                raise ValueError("skip_logits leaves no logits to compute the labels' loss from")
            return CausalLMOutputWithPast(logits=None, hidden_states=(hidden,), past_key_values=out.past_key_values)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      use_cache=True, cache=None, **kwargs):
        """First step: the whole (left-padded) prompt fills a new cache; later steps feed the last token.
        transformers before 5.2x hands the running cache back as `past_key_values`, newer releases as
        `cache`: either is the same KimiLinearCache."""
        past_key_values = past_key_values if past_key_values is not None else cache
        if past_key_values is None or past_key_values.get_seq_length() == 0:
            past_key_values = KimiLinearCache(self.config) if use_cache else None
        else:
            input_ids = input_ids[:, past_key_values.get_seq_length():]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "past_key_values": past_key_values,
                "use_cache": use_cache, "logits_to_keep": 1}
