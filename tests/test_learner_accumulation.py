"""Gradient accumulation is exact and ZeRO-3 exports full weights (issue 17, bugs 1, 2, 4, 7).

The same batch split into 1, 3 or 7 micro-batches must give the same optimizer step with DeepSpeed
(ZeRO 0-3, its CPU accelerator over gloo) and with the torch backend, for the three loss
aggregations, with the entropy bonus, the KL loss and TIS on. Float32, a tiny Kimi Linear model.
"""
import pytest
import torch

from deltarl.rl.algorithms import entropy_bonus, kl_loss, policy_loss
from deltarl.rl.config import AlgorithmSection, LearnerSection
from deltarl.rl.learner import Learner, response_logprobs
from deltarl.rl.samples import RolloutBatch, micro_batches, pad_right
from tests.test_learner import _distributed_env, make_checkpoint  # noqa: F401 (a fixture)

SEED = 1234
MAX_TOKENS = 9                     # the rollout's response budget: Dr.GRPO's constant
# Adam's first step is lr * g / (|g| + eps): where |g| is near eps, float noise in g (another summation
# order) moves the step by up to ~lr * 1e-2 (measured). lr 1e-5 keeps that under 1e-6, while a wrong gradient
# direction still moves parameters by up to 2 * lr. The grad norm checks the gradient's scale.
LR = 1e-5
AGGREGATIONS = ["token", "sequence", "seq-mean-token-sum-norm"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def batch(checkpoint):
    return varied_batch(checkpoint)


@pytest.fixture(scope="module")
def torch_step(checkpoint, batch):
    """The torch backend's step on the whole batch in one micro-batch, per aggregation (computed once)."""
    cache = {}

    def get(aggregation):
        if aggregation not in cache:
            cache[aggregation] = one_step(checkpoint, batch, "torch", 0, aggregation, parts=1)
        return cache[aggregation]
    return get


def varied_batch(path, n=14, seed=SEED) -> RolloutBatch:
    """n samples with prompts of 2-6 and responses of 1-MAX_TOKENS tokens (one empty response, so an
    empty sequence is in the mix), per-token advantages, and rollout logprobs = the policy's plus noise
    (TIS weights != 1)."""
    print(f"batch seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    draw = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
    prompts = [torch.randint(4, 60, (draw(2, 6),), generator=gen).tolist() for _ in range(n)]
    responses = [torch.randint(4, 60, (draw(1, MAX_TOKENS),), generator=gen).tolist() for _ in range(n)]
    responses[5] = []
    model = Learner(path, LearnerSection(backend="torch"), AlgorithmSection(), 1.0, 1).model
    with torch.no_grad():
        logp, _ = response_logprobs(model, prompts, responses, 1.0)
    mask = pad_right([[1.0] * len(r) for r in responses])
    rollout = (logp + 0.05 * torch.randn(logp.shape, generator=gen)) * mask
    batch = RolloutBatch(prompts, responses, rollout, mask, torch.arange(n) // 2, torch.zeros(n, dtype=torch.bool))
    batch.advantages = torch.randn(mask.shape, generator=gen) * mask
    return batch


def budget_for(batch: RolloutBatch, parts: int) -> int:
    """The smallest micro_batch_tokens that splits `batch` into exactly `parts` micro-batches."""
    longest = max(len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids))
    total = sum(len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids))
    for budget in range(longest, total + 1):
        if len(micro_batches(batch, budget)) == parts:
            return budget
    raise AssertionError(f"no token budget gives {parts} micro-batches")


def learner(path, backend, stage, aggregation, budget=4096, bf16=False):
    cfg = LearnerSection(backend=backend, zero_stage=stage, lr=LR, micro_batch_tokens=budget, bf16=bf16,
                         grad_clip=1.0)
    algo = AlgorithmSection(loss_aggregation=aggregation, kl_coef=0.1, kl_estimator="k3", entropy_coef=0.01,
                            tis_cap=2.0)
    actor = Learner(path, cfg, algo, temperature=1.0, total_steps=10, max_tokens=MAX_TOKENS)
    assert actor.backend == backend
    return actor


def one_step(path, batch, backend, stage, aggregation, parts):
    actor = learner(path, backend, stage, aggregation, budget_for(batch, parts))
    metrics = actor.train_step(batch)
    assert metrics["actor/micro_batches"] == parts
    return actor.named_weights(), metrics["actor/grad_norm"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# Every aggregation on the torch backend and ZeRO-3 (which partitions gradients and counts micro-steps
# in its forward); ZeRO 0, 1 and 2 take one aggregation each, so that every backend and every
# aggregation is covered while the file stays a few minutes on two cores. The DeepSpeed paths do not
# depend on the aggregation: it only changes the loss values.
CASES = [(b, s, a) for b, s in [("torch", 0), ("deepspeed", 3)] for a in AGGREGATIONS] + [
    ("deepspeed", 0, "sequence"), ("deepspeed", 1, "token"), ("deepspeed", 2, "seq-mean-token-sum-norm")]


@pytest.mark.slow
@pytest.mark.parametrize("backend,stage,aggregation", CASES)
def test_one_three_or_seven_micro_batches_give_the_same_step(checkpoint, batch, torch_step, backend, stage,
                                                             aggregation):
    from safetensors.torch import load_file
    initial = load_file(f"{checkpoint}/model.safetensors")
    ref_weights, ref_norm = torch_step(aggregation)
    assert max_diff(ref_weights, initial) > 0.5 * LR                 # the step moved the policy
    for parts in (1, 3, 7):
        weights, norm = one_step(checkpoint, batch, backend, stage, aggregation, parts)
        diff = max_diff(weights, ref_weights)
        print(f"{backend} ZeRO-{stage} {aggregation} {parts} micro-batches: max |dw| {diff:.2e}, "
              f"grad norm {norm:.6f} (torch, one micro-batch: {ref_norm:.6f})")
        assert diff < 1e-6
        assert norm == pytest.approx(ref_norm, rel=1e-5)             # Adam's first step hides the scale


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_accumulated_gradient_is_the_whole_batch_gradient(checkpoint, batch, aggregation):
    """The torch backend's gradient after 7 micro-batches against autograd of the whole batch's loss,
    written with the algorithm functions on one packed pass (each aggregation with its own denominator)."""
    actor = learner(checkpoint, "torch", 0, aggregation, budget_for(batch, 7))
    from deltarl.rl.algorithms import loss_denominator
    denominator = loss_denominator(batch.mask, aggregation, MAX_TOKENS)
    for i, index in enumerate(micro_batches(batch, actor.cfg.micro_batch_tokens)):
        loss, _ = actor._micro_loss(batch.subset(index), denominator)
        actor._backward(loss, boundary=i == 6)
    accumulated = {n: p.grad.clone() for n, p in actor.model.named_parameters()}

    actor.model.zero_grad(set_to_none=True)
    logp, entropy = response_logprobs(actor.model, batch.prompt_ids, batch.response_ids, 1.0, with_entropy=True)
    with torch.no_grad():
        ref, _ = response_logprobs(actor.reference, batch.prompt_ids, batch.response_ids, 1.0)
    T = logp.shape[1]
    mask = batch.mask[:, :T]
    loss, _ = policy_loss(logp, logp.detach(), batch.advantages[:, :T], mask, aggregation=aggregation,
                          max_len=MAX_TOKENS, rollout_logprobs=batch.rollout_logprobs[:, :T], tis_cap=2.0)
    loss = loss - 0.01 * entropy_bonus(entropy, mask, aggregation, MAX_TOKENS)
    loss = loss + 0.1 * kl_loss(logp, ref, mask, "k3", aggregation, MAX_TOKENS)
    loss.backward()
    worst = max((accumulated[n] - p.grad).abs().max().item() / p.grad.abs().max().clamp(min=1e-12).item()
                for n, p in actor.model.named_parameters())
    print(f"{aggregation}: worst per-tensor |g_accumulated - g_whole| / max|g_whole| = {worst:.2e}")
    assert worst < 1e-5


def test_zero3_exports_full_weights_equal_to_zero0(checkpoint, batch, tmp_path):
    """named_weights and save()'s transformers checkpoint under ZeRO-3 hold the full tensors, under the
    checkpoint's own names (what transformers and vLLM load), equal to a ZeRO-0 run's."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    initial = load_file(f"{checkpoint}/model.safetensors")
    names = set(initial)
    exported, saved = {}, {}
    for stage in (0, 3):
        actor = learner(checkpoint, "deepspeed", stage, "token", budget_for(batch, 3))
        before = actor.named_weights()                 # ZeRO-3 right after initialize: all partitioned
        assert set(before) == names and max_diff(before, initial) == 0.0
        actor.train_step(batch)
        exported[stage] = actor.named_weights()
        actor.save(str(tmp_path / f"zero{stage}"))
        saved[stage] = load_file(tmp_path / f"zero{stage}" / "policy" / "model.safetensors")
    assert set(exported[3]) == names and set(saved[3]) == names
    assert sum(t.numel() for t in exported[3].values()) == sum(t.numel() for t in exported[0].values()) > 100_000
    for k in names:
        assert exported[3][k].shape == exported[0][k].shape, k
    diff, diff_saved = max_diff(exported[3], exported[0]), max_diff(saved[3], saved[0])
    print(f"ZeRO-3 vs ZeRO-0 after one step: named_weights max |d| {diff:.2e}, save_pretrained {diff_saved:.2e}")
    assert diff < 1e-6 and diff_saved < 1e-6
    assert max_diff(saved[3], exported[3]) == 0.0
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "zero3" / "policy")
    assert max_diff({k: v for k, v in reloaded.state_dict().items()}, exported[3]) == 0.0


def test_drgrpo_needs_the_budget(checkpoint):
    with pytest.raises(ValueError, match="max_tokens"):
        Learner(checkpoint, LearnerSection(backend="torch"), AlgorithmSection(loss_aggregation="seq-mean-token-sum-norm"),
                temperature=1.0, total_steps=1)
