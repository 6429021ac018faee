"""A Kimi Linear model with MoBA layers: its config, cached decoding against the full forward, padded and
packed batches, and the embedded engine."""
import json
import os

import pytest
import torch

from deltarl.model import KimiLinearCache, KimiLinearConfig, KimiLinearForCausalLM, char_tokenizer, tiny_config
from deltarl.rollout import EmbeddedEngine, SamplingParams

from .packing import assert_packed_equals_separate

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "config_moba_off.json")


pytestmark = pytest.mark.usefixtures("moba_seed")      # tests/conftest.py: a printed seed per test


def moba_model(block_size=8, top_k=2, moba_layers=(2, 4), kda_every=2, dtype=torch.float64, **overrides):
    """4 layers; with kda_every=2 KDA, MLA, KDA, MLA (1-based 2 and 4 are MLA), kda_every=1 all MLA."""
    config = tiny_config(num_layers=4, kda_every=kda_every, eos_token_id=2, pad_token_id=0,
                         moba_config={"block_size": block_size, "top_k": top_k, "moba_layers": list(moba_layers)},
                         **overrides)
    return KimiLinearForCausalLM(config).to(dtype).eval()


def test_config_without_moba_saves_the_bytes_it_saved_before_moba(tmp_path):
    """config.json of a dense model is what the code before MoBA wrote (tests/data, saved then), apart from
    the transformers version that wrote it: no moba key, nothing reordered. vLLM loads exactly that."""
    config = tiny_config(num_layers=4, num_experts=4, eos_token_id=2, pad_token_id=0)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    golden = json.loads(open(GOLDEN).read())
    golden["transformers_version"] = saved["transformers_version"]
    assert (tmp_path / "config.json").read_text() == json.dumps(golden, indent=2, sort_keys=True) + "\n"
    assert "moba_config" not in saved and config.moba_config is None


def test_moba_config_round_trips_and_picks_its_layers(tmp_path):
    model = moba_model(moba_layers=[4], dtype=torch.float32)
    kinds = [getattr(layer.self_attn, "moba", "kda") for layer in model.model.layers]
    assert kinds == ["kda", None, "kda", (8, 2)]                  # MLA layer 2 stays dense
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["moba_config"] == {
        "block_size": 8, "top_k": 2, "moba_layers": [4]}
    loaded = KimiLinearForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(4, 128, (2, 40))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("field, moba", [
    ("moba_config.moba_layers", {"block_size": 8, "top_k": 2, "moba_layers": [1]}),    # a KDA layer
    ("moba_config.moba_layers", {"block_size": 8, "top_k": 2, "moba_layers": 4}),
    ("moba_config.block_size", {"block_size": 0, "top_k": 2, "moba_layers": [4]}),
    ("moba_config.top_k", {"block_size": 8, "top_k": 2.5, "moba_layers": [4]}),
    ("moba_config.top_k", {"block_size": 8, "moba_layers": [4]}),
    ("moba_config", {"block_size": 8, "top_k": 2, "moba_layers": [4], "stride": 2}),
])
def test_bad_moba_config_fails_naming_the_field(field, moba):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        tiny_config(num_layers=4, moba_config=moba)


@torch.no_grad()
def test_top_k_covering_every_block_gives_the_dense_models_logits():
    moba = moba_model(block_size=8, top_k=100)
    dense = KimiLinearForCausalLM(KimiLinearConfig(**{**moba.config.to_dict(), "moba_config": None}))
    dense.load_state_dict(moba.state_dict())
    dense = dense.to(torch.float64).eval()
    ids = torch.randint(4, 128, (2, 70))
    assert (moba(ids).logits - dense(ids).logits).abs().max() < 1e-12
    sparse = moba_model(block_size=8, top_k=1)
    sparse.load_state_dict(moba.state_dict())
    assert (sparse(ids).logits - dense(ids).logits).abs().max() > 1e-6       # the choice changes the output


def decode_step_by_step(model, ids, prefill, chunk=0):
    """Logits of a prefill of `prefill` tokens, then a chunk of `chunk` tokens after that history (MoBA's
    masked path), then one token at a time (the latent decode step)."""
    cache = KimiLinearCache(model.config)
    steps = [model(ids[:, :prefill], past_key_values=cache, use_cache=True).logits]
    if chunk:
        steps.append(model(ids[:, prefill:prefill + chunk], past_key_values=cache, use_cache=True).logits)
    for t in range(prefill + chunk, ids.shape[1]):
        steps.append(model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("block_size, top_k", [(4, 1), (8, 2), (8, 100), (16, 1)])
@torch.no_grad()
def test_cached_decoding_equals_full_forward_all_mla(block_size, top_k):
    """Every layer MLA with MoBA, float64: a prefill, a chunk after it, then one token at a time through
    the cache's block sums and the latent-space step; (4, 1) gathers the chosen blocks, (8, 100)
    chooses all and masks."""
    model = moba_model(block_size, top_k, moba_layers=[1, 2, 3, 4], kda_every=1)
    ids = torch.randint(4, 128, (3, 75))
    assert (decode_step_by_step(model, ids, prefill=21, chunk=13) - model(ids).logits).abs().max() < 1e-10


@torch.no_grad()
def test_cached_decoding_equals_full_forward_hybrid():
    """The hybrid in float32 (as tests/test_model.py's dense check; float64 KDA convolutions are slow on
    the CPU), prefill shorter than a block."""
    model = moba_model(block_size=8, top_k=2, dtype=torch.float32)
    ids = torch.randint(4, 128, (2, 60))
    assert (decode_step_by_step(model, ids, prefill=5) - model(ids).logits).abs().max() < 1e-4


def greedy_through_the_cache(model, ids, attention_mask, steps):
    """Greedy decoding driven by hand (prefill, then one token at a time through the cache): the
    logits of each step [B, steps, vocab]. (generate() is not used: under transformers 5.25 it hands the
    cache over as `cache=`, which prepare_inputs_for_generation does not read, so it never decodes from it.)"""
    cache = KimiLinearCache(model.config)
    logits = [model(ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True).logits[:, -1]]
    for _ in range(steps - 1):
        token = logits[-1].argmax(-1, keepdim=True)
        logits.append(model(token, past_key_values=cache, use_cache=True).logits[:, -1])
    return torch.stack(logits, dim=1)


@torch.no_grad()
def test_left_padded_batch_decodes_like_each_prompt_alone():
    """Blocks count from each sequence's first real token, not from the padded row's first column."""
    model = moba_model(block_size=4, top_k=1, moba_layers=[1, 2, 3, 4], kda_every=1)
    prompts = [torch.randint(4, 128, (n,)) for n in (5, 19, 11)]
    width = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts])
    mask = torch.stack([torch.arange(width) >= width - len(p) for p in prompts]).long()
    batched = greedy_through_the_cache(model, ids, mask, steps=16)
    for row, prompt in enumerate(prompts):
        alone = greedy_through_the_cache(model, prompt[None], None, steps=16)
        assert (batched[row] - alone[0]).abs().max() < 1e-10


def test_packed_sequences_equal_separate_forwards_with_gradients():
    assert_packed_equals_separate(moba_model(block_size=4, top_k=2).train(), [7, 30, 1, 13], tol=1e-6,
                                  grad_floor=1e-9, every_parameter=True)


def test_embedded_engine_logprobs_equal_the_full_forward():
    """Continuous batching (sequences leave the cache, prompts join it left-padded) keeps every MoBA
    layer's block sums right: each sampled token's logprob equals a full forward over prompt + response."""
    tokenizer = char_tokenizer()
    model = moba_model(block_size=4, top_k=1, moba_layers=[1, 2, 3, 4], kda_every=1,
                       vocab_size=len(tokenizer))
    model.config.eos_token_id = tokenizer.eos_token_id
    prompts = [tokenizer(p).input_ids for p in ["12+3=", "hello there, world", "a", "xyz = 1 + 2"]]
    params = SamplingParams(n=2, temperature=1.0, max_tokens=18, seed=3)
    completions = EmbeddedEngine(model, max_batch_size=3).generate(prompts, params)
    assert len(completions) == 8
    for c in completions:
        ids = torch.tensor([prompts[c.prompt_index] + c.token_ids])
        with torch.no_grad():
            logprobs = model(ids).logits[0].log_softmax(-1)
        start = len(prompts[c.prompt_index]) - 1
        expected = logprobs[start:start + len(c.token_ids)].gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
        assert (torch.tensor(c.logprobs, dtype=torch.float64) - expected).abs().max() < 1e-6
