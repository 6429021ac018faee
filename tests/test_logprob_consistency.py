"""Learner and rollout engine report the logprob of one distribution (issue 17, bug 5): under temperature,
top-k and top-p, the learner's recomputed logprobs of the sampled tokens equal the embedded engine's, so
the truncated-importance-sampling weights average 1; without the filter they were biased below 1."""
import torch

from deltarl.model import KimiLinearForCausalLM, char_tokenizer, tiny_config
from deltarl.rl.algorithms import masked_mean, tis_weights
from deltarl.rl.config import AlgorithmSection, LearnerSection
from deltarl.rl.learner import Learner, response_logprobs
from deltarl.rl.samples import batch_from_completions
from deltarl.rollout import EmbeddedEngine, SamplingParams

TOKENIZER = char_tokenizer()
PROMPTS = ["12+3=", "hello there", "a", "xyz = 1 + 2", "The answer is"]
TEMPERATURE, TOP_K, TOP_P = 0.8, 20, 0.9


def make_checkpoint(path) -> str:
    torch.manual_seed(0)
    config = tiny_config(num_layers=4, eos_token_id=TOKENIZER.eos_token_id, pad_token_id=TOKENIZER.pad_token_id)
    KimiLinearForCausalLM(config).save_pretrained(path)
    return str(path)


def rollout(path):
    """Samples of the embedded engine (its own copy of the checkpoint) under top-k 20 / top-p 0.9."""
    engine = EmbeddedEngine(KimiLinearForCausalLM.from_pretrained(path).eval(), max_batch_size=8)
    params = SamplingParams(n=4, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P, max_tokens=24, seed=3,
                            ignore_eos=True)
    prompt_ids = [TOKENIZER(p).input_ids for p in PROMPTS]
    return batch_from_completions(prompt_ids, engine.generate(prompt_ids, params))


def test_learner_logprobs_equal_the_engines_and_tis_weights_average_one(tmp_path):
    path = make_checkpoint(tmp_path / "m")
    batch = rollout(path)
    mask = batch.mask.bool()
    assert TOP_K < KimiLinearForCausalLM.from_pretrained(path).config.vocab_size
    actor = Learner(path, LearnerSection(backend="torch", micro_batch_tokens=64), AlgorithmSection(),
                    temperature=TEMPERATURE, total_steps=1, top_k=TOP_K, top_p=TOP_P)
    old = actor.policy_logprobs(batch)                                     # [B, T], in micro-batches
    diff = (old - batch.rollout_logprobs)[mask].abs().max().item()
    weights = tis_weights(old, batch.rollout_logprobs, batch.mask, tis_cap=2.0)
    mean_weight = masked_mean(weights, batch.mask).item()
    print(f"learner vs engine logprobs: max |diff| {diff:.2e} over {int(mask.sum())} tokens; "
          f"mean TIS weight {mean_weight:.7f}")
    assert diff < 1e-5
    assert abs(mean_weight - 1.0) < 1e-5

    # the learner's former distribution, log_softmax(logits / T) unfiltered: every weight <= 1, biased low
    with torch.no_grad():
        plain, _ = response_logprobs(actor.model, batch.prompt_ids, batch.response_ids, TEMPERATURE)
    plain_weights = tis_weights(plain, batch.rollout_logprobs, batch.mask, tis_cap=2.0)
    plain_mean = masked_mean(plain_weights, batch.mask).item()
    print(f"unfiltered learner logprobs: mean TIS weight {plain_mean:.4f}")
    assert (plain_weights[mask] <= 1.0 + 1e-6).all() and plain_mean < 0.99

    # and the training step, which computes its own logprobs, reports the same weights
    batch.advantages = torch.randn(batch.mask.shape, generator=torch.Generator().manual_seed(0)) * batch.mask
    metrics = actor.train_step(batch)
    assert abs(metrics["actor/tis_weight_mean"] - 1.0) < 1e-5
    assert abs(metrics["actor/ratio_mean"] - 1.0) < 1e-6


def test_reference_logprobs_stay_unfiltered(tmp_path):
    """The KL reference is the reference model's tempered distribution: a filtered one could give -inf to a
    sampled token. At the same weights it therefore equals the plain logprobs, not the filtered ones."""
    path = make_checkpoint(tmp_path / "m")
    batch = rollout(path)
    actor = Learner(path, LearnerSection(backend="torch"), AlgorithmSection(kl_coef=0.1), temperature=TEMPERATURE,
                    total_steps=1, top_k=TOP_K, top_p=TOP_P)
    with torch.no_grad():
        plain, _ = response_logprobs(actor.model, batch.prompt_ids, batch.response_ids, TEMPERATURE)
    ref = actor.reference_logprobs(batch)
    mask = batch.mask.bool()
    assert (ref - plain)[mask].abs().max() < 1e-5
    assert (ref - batch.rollout_logprobs)[mask].abs().max() > 1e-2
