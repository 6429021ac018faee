"""The embedded engine inside a Ray actor: same completions as in-process, weights updated remotely."""
import pytest
import ray
import torch

from deltarl.model import KimiLinearForCausalLM, char_tokenizer, tiny_config
from deltarl.rollout import EmbeddedEngine, SamplingParams, make_engine, rollout_actor_class


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def save_model(path, seed):
    torch.manual_seed(seed)
    tok = char_tokenizer()
    model = KimiLinearForCausalLM(tiny_config(num_layers=4, eos_token_id=tok.eos_token_id,
                                              pad_token_id=tok.pad_token_id)).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model


def test_engine_in_a_ray_actor_matches_in_process(tmp_path, ray_local):
    local_model = save_model(tmp_path / "a", seed=0)
    other = save_model(tmp_path / "b", seed=1)
    prompts = [char_tokenizer()(p).input_ids for p in ["1+1=", "hello"]]
    params = SamplingParams(n=2, temperature=0.8, max_tokens=8, seed=4)

    actor = rollout_actor_class(num_cpus=1).remote("embedded", str(tmp_path / "a"), device="cpu")
    remote = ray.get(actor.generate.remote(prompts, params))
    local = EmbeddedEngine(local_model, char_tokenizer()).generate(prompts, params)
    assert [c.token_ids for c in remote] == [c.token_ids for c in local]
    assert [c.text for c in remote] == [c.text for c in local]

    ray.get(actor.update_weights.remote(list(other.state_dict().items())))
    remote = ray.get(actor.generate.remote(prompts, params))
    expected = EmbeddedEngine(other, char_tokenizer()).generate(prompts, params)
    assert [c.token_ids for c in remote] == [c.token_ids for c in expected]


def test_unknown_engine_names_the_allowed_values():
    with pytest.raises(ValueError, match="embedded"):
        make_engine("sglang", "nowhere")
