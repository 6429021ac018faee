"""The learner's update schedule: one update per step by default, PPO epochs x mini-batches when asked,
with the old logprobs frozen before the first update (torch and DeepSpeed ZeRO-2 backends, in-process)."""
import os

import pytest
import torch

from deltarl.model import KimiLinearForCausalLM, char_tokenizer, tiny_config
from deltarl.rl.config import AlgorithmSection, LearnerSection
from deltarl.rl.learner import Learner, free_port, response_logprobs
from deltarl.rl.samples import RolloutBatch, pad_right


@pytest.fixture(scope="module", autouse=True)
def _distributed_env():
    """A free port for the single-process gloo group DeepSpeed starts (others may run tests beside us)."""
    import torch.distributed as dist

    from tests.conftest import RENDEZVOUS, restore_environment
    saved = {name: os.environ.get(name) for name in RENDEZVOUS}
    if not dist.is_initialized():       # (once joined, the group keeps its port; DeepSpeed still reads the rest)
        os.environ["MASTER_PORT"] = str(free_port("127.0.0.1"))
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    yield
    restore_environment(saved)


BACKENDS = ["torch", "deepspeed"]


def make_checkpoint(path):
    torch.manual_seed(0)
    tok = char_tokenizer()
    KimiLinearForCausalLM(tiny_config(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save_pretrained(path)
    return str(path)


def make_batch(model, n=8):
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 60, (int(torch.randint(3, 7, (1,), generator=gen)),), generator=gen).tolist()
               for _ in range(n)]
    responses = [torch.randint(4, 60, (int(torch.randint(1, 6, (1,), generator=gen)),), generator=gen).tolist()
                 for _ in range(n)]
    with torch.no_grad():
        logp, _ = response_logprobs(model, prompts, responses, 1.0)
    mask = pad_right([[1.0] * len(r) for r in responses])
    batch = RolloutBatch(prompts, responses, logp, mask, torch.arange(n) // 4, torch.zeros(n, dtype=torch.bool))
    batch.advantages = torch.randn(n, 1, generator=gen) * mask
    return batch


def learner(path, backend="torch", **algo):
    actor = Learner(path, LearnerSection(backend=backend, zero_stage=2, lr=1e-2), AlgorithmSection(**algo),
                    temperature=1.0, total_steps=10)
    assert actor.backend == backend
    return actor


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_update_per_step_by_default_with_ratio_one(tmp_path, backend):
    actor = learner(make_checkpoint(tmp_path / "m"), backend)
    metrics = actor.train_step(make_batch(actor.model))
    assert metrics["actor/updates"] == 1.0
    assert abs(metrics["actor/ratio_mean"] - 1.0) < 1e-6 and metrics["actor/clip_frac"] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_ppo_epochs_and_mini_batches_take_that_many_steps_against_frozen_old_logprobs(tmp_path, backend):
    actor = learner(make_checkpoint(tmp_path / "m"), backend, ppo_epochs=2, mini_batches=2)
    batch = make_batch(actor.model)
    before = {k: v.clone() for k, v in actor.model.state_dict().items()}
    metrics = actor.train_step(batch)
    assert metrics["actor/updates"] == 4.0
    assert actor.scheduler.last_epoch == 4                     # four optimizer steps
    assert any(not torch.equal(before[k], v) for k, v in actor.model.state_dict().items())
    # the old logprobs were the policy's before the first update, so later updates see ratios != 1
    assert batch.old_logprobs is not None
    assert torch.allclose(batch.old_logprobs * batch.mask, batch.rollout_logprobs * batch.mask, atol=1e-5)
    assert metrics["actor/ratio_max"] > 1.0 + 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_logprobs_in_micro_batches_equal_one_packed_pass(tmp_path, backend):
    actor = Learner(make_checkpoint(tmp_path / "m"), LearnerSection(backend=backend, micro_batch_tokens=12),
                    AlgorithmSection(kl_coef=0.1, kl_mode="reward"), temperature=1.0, total_steps=10)
    batch = make_batch(actor.model)
    with torch.no_grad():
        whole, _ = response_logprobs(actor.reference, batch.prompt_ids, batch.response_ids, 1.0)
    ref = actor.reference_logprobs(batch)
    assert ref.shape == batch.mask.shape
    assert torch.allclose(ref, whole, atol=1e-6)
