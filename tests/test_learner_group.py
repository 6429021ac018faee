"""A learner group of 2 DeepSpeed ranks (Ray actors, gloo on the CPU) takes the same step as one rank on
the same batch (ZeRO-2, and ZeRO-3 with two mini-batches so the old logprobs are computed per rank),
although one rank runs more micro-batches than the other; checkpoints carry the group size; a rank
killed with SIGKILL fails the group's call with an error naming it. Float32, a tiny Kimi Linear model."""
import os
import signal

import pytest
import ray
import torch

from deltarl.rl.config import AlgorithmSection, LearnerSection
from deltarl.rl.learner import Learner, assign_ranks, rank_micro_batches
from deltarl.rl.learner_group import LearnerGroupError, combine_metrics, start_learner_group
from tests.test_learner import make_checkpoint
from tests.test_learner_accumulation import LR, MAX_TOKENS, max_diff, varied_batch

SEED = 2468


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("model"))


def uneven_budget(batch, world=2) -> int:
    """The smallest micro_batch_tokens at which some rank runs more micro-batches than another (so the
    others pad) and the busiest runs at least 3."""
    owner = assign_ranks(batch, world)
    for budget in range(max(len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids)), 200):
        counts = [sum(i is not None for i in plan) for plan in rank_micro_batches(batch, owner, world, budget)]
        if len(set(counts)) > 1 and max(counts) >= 3:
            print(f"micro_batch_tokens {budget}: micro-batches per rank {counts}")
            return budget
    raise AssertionError("no budget gives the ranks different micro-batch counts")


def configs(stage, budget, aggregation, mini_batches):
    cfg = LearnerSection(backend="deepspeed", zero_stage=stage, lr=LR, micro_batch_tokens=budget, grad_clip=1.0)
    algo = AlgorithmSection(loss_aggregation=aggregation, kl_coef=0.1, kl_estimator="k3", entropy_coef=0.01,
                            tis_cap=2.0, mini_batches=mini_batches)
    return cfg, algo


CASES = [(2, "token", 1), (3, "sequence", 2)]


@pytest.mark.slow
@pytest.mark.parametrize("stage,aggregation,mini_batches", CASES)
def test_two_ranks_take_the_one_rank_step(ray_local, checkpoint, tmp_path, stage, aggregation, mini_batches):
    print(f"batch seed {SEED}")
    batch = varied_batch(checkpoint, n=14, seed=SEED)
    cfg, algo = configs(stage, uneven_budget(batch), aggregation, mini_batches)

    # both in Ray actors: a process group started in this pytest process would outlive the test
    alone = start_learner_group([{"num_cpus": 1}], checkpoint, cfg, algo, 1.0, 10, max_tokens=MAX_TOKENS)
    expected = alone.train_step(batch)
    group = start_learner_group([{"num_cpus": 1}] * 2, checkpoint, cfg, algo, 1.0, 10, max_tokens=MAX_TOKENS)
    assert [r["backend"] for r in group.ranks] == ["deepspeed"] * 2
    got = group.train_step(batch)

    diff = max_diff(group.named_weights(), alone.named_weights())
    print(f"ZeRO-{stage} {aggregation} x{mini_batches} mini-batches: 2 ranks vs 1, max |dw| {diff:.2e}; grad norm "
          f"{got['actor/grad_norm']:.6f} vs {expected['actor/grad_norm']:.6f}; pg_loss {got['actor/pg_loss']:.6f} vs "
          f"{expected['actor/pg_loss']:.6f}")
    assert diff < 1e-6
    assert got["actor/updates"] == expected["actor/updates"] == mini_batches
    assert got["actor/grad_norm"] == pytest.approx(expected["actor/grad_norm"], rel=1e-5)
    for key in ("actor/pg_loss", "actor/kl", "actor/entropy", "actor/ratio_mean", "actor/ratio_max"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key

    # the logprobs a group assembles from its ranks' rows are one learner's
    lp_diff = (group.policy_logprobs(batch) - alone.policy_logprobs(batch)).abs().max().item()
    ref_diff = (group.reference_logprobs(batch) - alone.reference_logprobs(batch)).abs().max().item()
    print(f"policy logprobs max |d| {lp_diff:.2e}, reference {ref_diff:.2e}")
    assert lp_diff < 1e-5 and ref_diff < 1e-5

    # checkpoints: every rank's part, rank 0's policy; a round trip; another group size is refused
    folder = tmp_path / "ckpt"
    before = group.named_weights()
    group.save(str(folder))
    assert (folder / "learner_state.pt").exists() and (folder / "learner_state_rank1.pt").exists()
    assert max_diff(before, Learner(str(folder / "policy"), LearnerSection(backend="torch"), AlgorithmSection(),
                                    1.0, 1).model.state_dict()) == 0.0
    group.load(str(folder))
    assert max_diff(group.named_weights(), before) == 0.0
    with pytest.raises(LearnerGroupError, match=r"learner rank 0 of 1 failed in load: ValueError: checkpoint .* learner\.num_workers=2"):
        alone.load(str(folder))
    group.kill()


def test_a_killed_rank_fails_the_call_naming_it(ray_local, checkpoint):
    """SIGKILL to rank 1's process: the next call fails fast with LearnerGroupError naming rank 1, and
    rank 0 (which could wait in a collective for ever) is killed too."""
    print(f"batch seed {SEED}")
    batch = varied_batch(checkpoint, n=6, seed=SEED)
    cfg, algo = configs(2, 64, "token", 1)
    group = start_learner_group([{"num_cpus": 1}] * 2, checkpoint, cfg, algo, 1.0, 10, max_tokens=MAX_TOKENS)
    group.train_step(batch)
    os.kill(group.ranks[1]["pid"], signal.SIGKILL)
    with pytest.raises(LearnerGroupError, match=r"learner rank 1 of 2 failed in train_step: its process died"):
        group.train_step(batch)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(group.actors[0].rendezvous.remote(), timeout=60)


def test_metrics_combine_parts_maxima_and_shared_values():
    ranks = [{"actor/pg_loss": 0.25, "actor/entropy": 1.0, "actor/ratio_max": 1.5, "actor/grad_norm": 3.0},
             {"actor/pg_loss": -0.5, "actor/entropy": 0.5, "actor/ratio_max": 1.25, "actor/grad_norm": 3.0}]
    assert combine_metrics(ranks) == {"actor/pg_loss": -0.25, "actor/entropy": 1.5, "actor/ratio_max": 1.5,
                                      "actor/grad_norm": 3.0}


def test_assignment_balances_tokens_and_pads_every_rank_to_the_same_count(checkpoint):
    batch = varied_batch(checkpoint, n=14, seed=SEED)
    sizes = [len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids)]
    owner = assign_ranks(batch, 3)
    loads = [sum(s for s, o in zip(sizes, owner) if o == r) for r in range(3)]
    print(f"tokens per rank {loads}")
    assert max(loads) - min(loads) <= max(sizes)                    # greedy, longest first
    plans = rank_micro_batches(batch, owner, 3, 20)
    assert len({len(p) for p in plans}) == 1
    real = sorted(i for plan in plans for group in plan if group is not None for i in group)
    assert real == list(range(batch.size))                           # every sample once
    assert assign_ranks(batch, 1) == [0] * batch.size
    assert torch.equal(torch.tensor(owner), torch.tensor(assign_ranks(batch, 3)))   # deterministic
