"""Kimi Linear model: cached decoding, padding, packing, checkpoints, generate(), config validation."""
import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from deltarl.model import KimiLinearCache, KimiLinearConfig, KimiLinearForCausalLM, cache_bytes_per_sequence, tiny_config

from .packing import assert_packed_equals_separate


def hybrid_model(seed=0, **overrides):
    """4 layers: KDA (dense FFN), KDA (MoE), KDA (MoE), MLA (MoE)."""
    torch.manual_seed(seed)
    settings = dict(num_layers=4, num_experts=4, num_experts_per_token=2, first_k_dense_replace=1,
                    eos_token_id=2, pad_token_id=0)
    config = tiny_config(**{**settings, **overrides})
    return KimiLinearForCausalLM(config).eval()


def test_layer_kinds_follow_linear_attn_config():
    model = hybrid_model()
    kinds = [type(layer.self_attn).__name__ for layer in model.model.layers]
    ffns = ["moe" if hasattr(layer, "block_sparse_moe") else "dense" for layer in model.model.layers]
    assert kinds == ["KimiDeltaAttention"] * 3 + ["KimiMLAAttention"]
    assert ffns == ["dense", "moe", "moe", "moe"]


@torch.no_grad()
def test_step_by_step_decoding_matches_full_forward():
    model = hybrid_model()
    ids = torch.randint(4, 128, (3, 75))
    full = model(ids).logits
    cache = KimiLinearCache(model.config)
    steps = [model(ids[:, :40], past_key_values=cache, use_cache=True).logits]
    for t in range(40, 75):
        steps.append(model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-4
    assert cache.get_seq_length() == 75


@torch.no_grad()
def test_mla_history_grows_in_place_between_regrowths():
    """A decode step writes its MLA latents into the history's spare room; the buffers are reallocated
    only when full (an eighth more each time), and the logits still match the full forward."""
    from deltarl.model.cache import MLAState
    model = hybrid_model()
    ids = torch.randint(4, 128, (2, 200))
    full = model(ids).logits
    cache = KimiLinearCache(model.config)
    steps = [model(ids[:, :100], past_key_values=cache, use_cache=True).logits]
    mla = next(i for i, state in enumerate(cache.layers) if isinstance(state, MLAState))
    reallocations = 0
    for t in range(100, 200):
        before = cache.layers[mla].latent.data_ptr()
        steps.append(model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
        reallocations += cache.layers[mla].latent.data_ptr() != before
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-4
    assert 1 <= reallocations <= 8                  # 100 -> 200 tokens: 6 regrowths, not 100 copies
    assert cache.layers[mla].length == 200


@torch.no_grad()
def test_left_padded_batch_decodes_like_each_prompt_alone():
    model = hybrid_model()
    prompts = [torch.randint(4, 128, (n,)) for n in (5, 11, 8)]
    width = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts])
    mask = torch.stack([torch.arange(width) >= width - len(p) for p in prompts]).long()
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], max_new_tokens=8, do_sample=False, eos_token_id=None)
        assert torch.equal(batched[row, width:], alone[0, len(prompt):])


@torch.no_grad()
def test_generate_equals_manual_greedy_loop():
    model = hybrid_model()
    ids = torch.randint(4, 128, (2, 9))
    fed = []                       # tokens per forward: the prompt, then one per step through the cache
    hook = model.model.embed_tokens.register_forward_hook(lambda m, args, out: fed.append(args[0].shape[1]))
    out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
    hook.remove()
    assert fed == [9] + [1] * 11, f"generate() did not decode through the cache: tokens fed per step {fed}"
    x = ids
    for _ in range(12):
        x = torch.cat([x, model(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, x)


@torch.no_grad()
def test_packed_sequences_equal_separate_forwards():
    model = hybrid_model()
    seqs = [torch.randint(4, 128, (n,)) for n in (7, 70, 1, 33)]
    cu = torch.tensor([0] + torch.tensor([len(s) for s in seqs]).cumsum(0).tolist(), dtype=torch.int32)
    packed = model(torch.cat(seqs)[None], cu_seqlens=cu).logits[0]
    for s, start, end in zip(seqs, cu[:-1].tolist(), cu[1:].tolist()):
        assert (packed[start:end] - model(s[None]).logits[0]).abs().max() < 1e-5


def test_many_short_packed_sequences_equal_separate_forwards_with_gradients():
    """The RL learner's layout (many short sequences in one row): MLA attends over right-padded rows
    gathered by index, KDA over one chunk per sequence; logits and gradients match separate passes."""
    assert_packed_equals_separate(hybrid_model().train(), [5, 9, 3, 7, 9, 1, 6, 8], tol=1e-5, grad_floor=1e-6)


def test_training_gradients_reach_every_parameter():
    model = hybrid_model(num_experts_per_token=4).train()
    ids = torch.randint(4, 128, (2, 20))
    model(ids, labels=ids).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(4, 128, (2, 20))
    grads = []
    for checkpointing in (False, True):
        model = hybrid_model().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(ids, labels=ids).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


EXPECTED_KDA = ["q_proj", "k_proj", "v_proj", "q_conv1d", "k_conv1d", "v_conv1d", "f_a_proj", "f_b_proj",
                "dt_bias", "A_log", "b_proj", "g_a_proj", "g_b_proj", "o_norm", "o_proj"]
EXPECTED_MLA = ["q_proj", "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj"]


@torch.no_grad()
def test_save_pretrained_round_trip(tmp_path):
    model = hybrid_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "kimi_linear"
    assert config["architectures"] == ["KimiLinearForCausalLM"]
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        names = set(f.keys())
        shapes = {n: tuple(f.get_slice(n).get_shape()) for n in names}
    H, D, W = 4, 16, 4
    for part in EXPECTED_KDA:
        assert any(n.startswith(f"model.layers.0.self_attn.{part}") for n in names), part
    for part in EXPECTED_MLA:
        assert any(n.startswith(f"model.layers.3.self_attn.{part}") for n in names), part
    assert shapes["model.layers.0.self_attn.q_conv1d.weight"] == (H * D, 1, W)
    assert shapes["model.layers.0.self_attn.A_log"] == (1, 1, H, 1)
    assert shapes["model.layers.0.self_attn.dt_bias"] == (H * D,)
    for name in ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                 "model.layers.0.mlp.gate_proj.weight", "model.layers.1.block_sparse_moe.gate.weight",
                 "model.layers.1.block_sparse_moe.gate.e_score_correction_bias",
                 "model.layers.1.block_sparse_moe.experts.3.w2.weight",
                 "model.layers.1.block_sparse_moe.shared_experts.up_proj.weight",
                 "model.layers.2.input_layernorm.weight", "model.layers.2.post_attention_layernorm.weight"]:
        assert name in names, name

    assert isinstance(AutoConfig.from_pretrained(tmp_path), KimiLinearConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, KimiLinearForCausalLM)
    ids = torch.randint(4, 128, (2, 30))
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_moe_routing_uses_bias_for_choice_and_scores_for_weights():
    model = hybrid_model()
    moe = model.model.layers[1].block_sparse_moe
    x = torch.randn(5, 64)
    scores = moe.gate(x).sigmoid()
    moe.gate.e_score_correction_bias.copy_(torch.tensor([10.0, 10.0, 0.0, 0.0]))
    ids, weights = moe.route(x)
    assert sorted(ids[0].tolist()) == [0, 1]
    chosen = scores.gather(1, ids)
    assert torch.allclose(weights, chosen / chosen.sum(-1, keepdim=True) * 2.5)


def test_cache_memory_of_hybrid_is_a_quarter_of_all_mla_at_long_context():
    hybrid = tiny_config(num_layers=8)
    all_mla = tiny_config(num_layers=8, kda_every=1)
    long = 100_000
    saving = 1 - cache_bytes_per_sequence(hybrid, long)["total"] / cache_bytes_per_sequence(all_mla, long)["total"]
    assert 0.74 < saving < 0.76

    model = hybrid_model()
    cache = KimiLinearCache(model.config)
    with torch.no_grad():
        model(torch.randint(4, 128, (2, 10)), past_key_values=cache, use_cache=True)
    expected = cache_bytes_per_sequence(model.config, 10, dtype=torch.float32)["total"]
    assert cache.nbytes_per_sequence() == expected


@pytest.mark.parametrize("field, change", [
    ("linear_attn_config.kda_layers", dict(linear_attn_config={
        "kda_layers": [1, 2], "full_attn_layers": [4], "num_heads": 4, "head_dim": 16, "short_conv_kernel_size": 4})),
    ("linear_attn_config.kda_layers", dict(linear_attn_config={
        "kda_layers": [1, 2, 3, 4], "full_attn_layers": [4], "num_heads": 4, "head_dim": 16,
        "short_conv_kernel_size": 4})),
    ("head_dim", dict(head_dim=10)),
    ("hidden_act", dict(hidden_act="gelu")),
    ("num_experts_per_token", dict(num_experts=4, num_experts_per_token=8)),
    ("linear_attn_config.head_dim", dict(linear_attn_config={
        "kda_layers": [1, 2, 3], "full_attn_layers": [4], "num_heads": 4, "head_dim": 0,
        "short_conv_kernel_size": 4})),
])
def test_bad_config_fails_at_construction_naming_the_field(field, change):
    base = tiny_config(num_layers=4).to_dict()
    for key in ("model_type", "transformers_version", "architectures"):
        base.pop(key, None)
    base.update(change)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        KimiLinearConfig(**base)
