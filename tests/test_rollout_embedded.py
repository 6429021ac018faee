"""The embedded rollout engine: greedy parity with generate(), exact logprobs, continuous batching."""
import math

import pytest
import torch

from deltarl.model import KimiLinearForCausalLM, char_tokenizer, tiny_config
from deltarl.rollout import EmbeddedEngine, SamplingParams, filtered_logprobs

TOKENIZER = char_tokenizer()
PROMPTS = ["12+3=", "hello there", "a", "xyz = 1 + 2", "The answer is"]


def make_model(seed=0):
    torch.manual_seed(seed)
    config = tiny_config(num_layers=4, num_experts=4, eos_token_id=TOKENIZER.eos_token_id,
                         pad_token_id=TOKENIZER.pad_token_id)
    return KimiLinearForCausalLM(config).eval()


def prompt_ids():
    return [TOKENIZER(p).input_ids for p in PROMPTS]


def reference_logprob(logits: list[float], token: int, temperature: float, top_k: int = -1, top_p: float = 1.0):
    """The logprob of `token` under temperature, top-k and top-p, written out in float64 Python (not the
    engine's code): keep the k largest logits (all of a tie at the k-th), renormalise, walk the survivors
    from most to least likely and keep each while the mass already kept is < top_p (vLLM's rule: a token
    goes once the more likely ones hold >= top_p), renormalise again. -inf if the token was cut."""
    z = [x / temperature for x in logits]
    kept = range(len(z))
    if 0 < top_k < len(z):
        kth = sorted(z, reverse=True)[top_k - 1]
        kept = [i for i in kept if z[i] >= kth]
    top = max(z[i] for i in kept)
    weight = {i: math.exp(z[i] - top) for i in kept}
    total = sum(weight.values())
    nucleus, mass = [], 0.0
    for i in sorted(kept, key=lambda i: -z[i]):
        if nucleus and mass >= top_p:
            break
        nucleus.append(i)
        mass += weight[i] / total
    if token not in nucleus:
        return -math.inf
    return z[token] - top - math.log(sum(weight[i] for i in nucleus))


@torch.no_grad()
def recomputed_logprobs(model, prompt, tokens, temperature, top_k=-1, top_p=1.0):
    """The model's logprob of each sampled token, from a plain forward pass and reference_logprob."""
    ids = torch.tensor([prompt + tokens])
    logits = model(ids).logits[0, len(prompt) - 1: -1].double().tolist()
    return torch.tensor([reference_logprob(row, t, temperature, top_k, top_p) for row, t in zip(logits, tokens)])


def test_greedy_equals_model_generate():
    model = make_model()
    out = EmbeddedEngine(model, max_batch_size=8).generate(
        prompt_ids(), SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    for completion, prompt in zip(out, prompt_ids()):
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None)
        assert completion.token_ids == ref[0, len(prompt):].tolist()
        assert completion.finish_reason == "length"


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_the_models_recomputed_logprobs(temperature):
    model = make_model()
    params = SamplingParams(n=2, temperature=temperature, max_tokens=20, seed=3, ignore_eos=True)
    for c in EmbeddedEngine(model, max_batch_size=4).generate(prompt_ids(), params):
        ref = recomputed_logprobs(model, prompt_ids()[c.prompt_index], c.token_ids, temperature)
        assert (torch.tensor(c.logprobs, dtype=torch.float64) - ref).abs().max() < 1e-5


def test_filtered_logprobs_equal_an_independent_reference_under_top_k_and_top_p():
    """top-k 20 then top-p 0.9 at temperature 0.8: the engine's logprob of every sampled token equals
    reference_logprob's, and the filter is active (some tokens had less than all of the mass)."""
    model = make_model()
    params = SamplingParams(n=2, temperature=0.8, top_k=20, top_p=0.9, max_tokens=20, seed=7, ignore_eos=True)
    worst, plain_gap = 0.0, 0.0
    for c in EmbeddedEngine(model, max_batch_size=4).generate(prompt_ids(), params):
        prompt = prompt_ids()[c.prompt_index]
        ref = recomputed_logprobs(model, prompt, c.token_ids, 0.8, top_k=20, top_p=0.9)
        plain = recomputed_logprobs(model, prompt, c.token_ids, 0.8)
        assert torch.isfinite(ref).all()                       # every sampled token survives the filter
        worst = max(worst, float((torch.tensor(c.logprobs, dtype=torch.float64) - ref).abs().max()))
        plain_gap = max(plain_gap, float((ref - plain).max()))
    assert worst < 1e-5
    assert plain_gap > 1e-2          # the filtered distribution is not the plain one on these tokens


@pytest.mark.parametrize("top_k, top_p", [(2, 1.0), (-1, 0.7), (3, 0.5), (5, 0.999)])
def test_filter_rules_match_the_reference_on_random_logits(top_k, top_p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g, dtype=torch.float64) * 3
    logp = filtered_logprobs(logits, 1.3, top_k, top_p)
    for row, out in zip(logits.tolist(), logp.tolist()):
        expected = [reference_logprob(row, t, 1.3, top_k, top_p) for t in range(len(row))]
        assert [math.isinf(x) for x in out] == [math.isinf(x) for x in expected]
        assert max(abs(a - b) for a, b in zip(out, expected) if not math.isinf(b)) < 1e-5


@pytest.mark.parametrize("max_prefill_tokens", [65536, 1])
def test_continuous_batching_equals_one_sequence_at_a_time(max_prefill_tokens):
    """Also with a prefill budget so small that prompts join one at a time while others decode."""
    model = make_model()
    params = SamplingParams(n=2, temperature=0.9, max_tokens=24, seed=11)
    together = EmbeddedEngine(model, max_batch_size=6, max_prefill_tokens=max_prefill_tokens).generate(
        prompt_ids(), params)
    one_prompt_at_a_time = EmbeddedEngine(model, max_batch_size=2).generate(prompt_ids(), params)
    assert [c.token_ids for c in together] == [c.token_ids for c in one_prompt_at_a_time]
    for a, b in zip(together, one_prompt_at_a_time):
        assert (a.prompt_index, a.sample_index, a.finish_reason) == (b.prompt_index, b.sample_index, b.finish_reason)
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-5


def test_samples_of_a_prompt_differ_and_seed_reproduces():
    model = make_model()
    params = SamplingParams(n=4, temperature=1.0, max_tokens=12, seed=5, ignore_eos=True)
    first = EmbeddedEngine(model).generate(prompt_ids()[:1], params)
    again = EmbeddedEngine(model).generate(prompt_ids()[:1], params)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert len({tuple(c.token_ids) for c in first}) > 1


def test_stop_tokens_strings_and_eos_end_sequences():
    model = make_model()
    greedy = EmbeddedEngine(model, TOKENIZER).generate(prompt_ids()[:1], SamplingParams(temperature=0, max_tokens=12,
                                                                                      ignore_eos=True))[0]
    stop_token = greedy.token_ids[3]
    out = EmbeddedEngine(model, TOKENIZER).generate(
        prompt_ids()[:1], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_token], ignore_eos=True))[0]
    assert out.finish_reason == "stop" and out.token_ids == greedy.token_ids[:greedy.token_ids.index(stop_token) + 1]
    stop_text = greedy.text[3:5]
    out = EmbeddedEngine(model, TOKENIZER).generate(
        prompt_ids()[:1], SamplingParams(temperature=0, max_tokens=12, stop=[stop_text], ignore_eos=True))[0]
    assert out.finish_reason == "stop" and stop_text not in out.text
    assert out.text == greedy.text[: greedy.text.index(stop_text)]

    model.config.eos_token_id = greedy.token_ids[2]
    out = EmbeddedEngine(model).generate(prompt_ids()[:1], SamplingParams(temperature=0, max_tokens=12))[0]
    assert out.finish_reason == "stop" and out.token_ids == greedy.token_ids[:3]


def test_top_k_and_top_p_sample_only_allowed_tokens():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    logp = filtered_logprobs(logits, 1.0, top_k=2)
    assert torch.isinf(logp[0, 2:]).all() and torch.allclose(logp[0, :2].exp().sum(), torch.tensor(1.0))
    probs = logits.softmax(-1)[0]
    logp = filtered_logprobs(logits, 1.0, top_p=float(probs[0] + 1e-3))   # needs the top two tokens
    assert torch.isfinite(logp[0, :2]).all() and torch.isinf(logp[0, 2:]).all()
    model = make_model()
    for c in EmbeddedEngine(model).generate(prompt_ids(), SamplingParams(temperature=1.0, top_k=3, max_tokens=8,
                                                                          seed=0, ignore_eos=True)):
        ids = torch.tensor([prompt_ids()[c.prompt_index] + c.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt_ids()[c.prompt_index]) - 1: -1]
        top3 = logits.topk(3, -1).indices
        assert all(t in row.tolist() for t, row in zip(c.token_ids, top3))


def test_update_weights_makes_the_engine_decode_like_the_new_model():
    old, new = make_model(0), make_model(1)
    engine = EmbeddedEngine(old)
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    expected = EmbeddedEngine(new).generate(prompt_ids(), params)
    assert [c.token_ids for c in engine.generate(prompt_ids(), params)] != [c.token_ids for c in expected]
    engine.update_weights(list(new.state_dict().items()))
    assert [c.token_ids for c in engine.generate(prompt_ids(), params)] == [c.token_ids for c in expected]
    with pytest.raises(KeyError, match="no_such"):
        engine.update_weights([("no_such.weight", torch.zeros(1))])


def test_sleep_refuses_generation_until_woken():
    engine = EmbeddedEngine(make_model())
    engine.sleep()
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(prompt_ids(), SamplingParams(max_tokens=2))
    engine.wake_up()
    assert len(engine.generate(prompt_ids(), SamplingParams(max_tokens=2))) == len(PROMPTS)


@pytest.mark.parametrize("field, value", [("n", 0), ("temperature", -1.0), ("top_p", 0.0), ("max_tokens", 0)])
def test_bad_sampling_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
        SamplingParams(**{field: value})
