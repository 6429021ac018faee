"""save + load continues a run exactly (issue 17, bug 3): after resuming, the parameters, the optimizer
state (with DeepSpeed's fp32 master weights under bf16), the LR schedule, the RNG states and the KL
reference equal an uninterrupted run's at the same step, bitwise on the CPU; a missing tensor fails."""
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from deltarl.rl.config import AlgorithmSection, LearnerSection
from deltarl.rl.learner import Learner
from tests.test_learner import _distributed_env, make_checkpoint  # noqa: F401 (a fixture)
from tests.test_learner_accumulation import budget_for, varied_batch

SEED = 4321


def learner(path, backend, stage, bf16, budget):
    cfg = LearnerSection(backend=backend, zero_stage=stage, bf16=bf16, lr=1e-3, warmup_steps=3,
                         micro_batch_tokens=budget)
    algo = AlgorithmSection(kl_coef=0.1, entropy_coef=0.01)
    return Learner(path, cfg, algo, temperature=1.0, total_steps=10, max_tokens=9)


def same(a, b, where="") -> list[str]:
    """Paths where two nested structures (dicts, lists, objects, tensors, numbers) differ; tensors bitwise."""
    if isinstance(a, torch.Tensor):
        return [] if isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b) else [where]
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return [f"{where} keys"]
        return [d for k in a for d in same(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in same(x, y, f"{where}[{i}]")]
    if hasattr(a, "__dict__") and type(a) is type(b):                # e.g. DeepSpeed's loss scaler
        return same(vars(a), vars(b), where)
    return [] if a == b or (a != a and b != b) else [where]


def training_state(actor, folder) -> dict:
    """Everything a continued run depends on, read back from `save`: the learner's files as written,
    DeepSpeed's checkpoint (module, optimizer with fp32 masters, scheduler) included."""
    actor.save(str(folder))
    files = sorted(p for p in folder.rglob("*.pt"))
    state = {str(p.relative_to(folder)): torch.load(p, weights_only=False) for p in files}
    for engine_state in state.values():   # DeepSpeed also records its config (paths differ, not the run)
        if isinstance(engine_state, dict):
            engine_state.pop("ds_config", None)
    state["policy"] = load_file(folder / "policy" / "model.safetensors")
    state["lr"] = actor.scheduler.get_last_lr()
    state["scheduler_step"] = actor.scheduler.last_epoch
    return state


def full_state_dict(model) -> dict:
    """`model`'s tensors in full: a ZeRO-3 model (built under zero.Init) holds only partitions, so its
    parameters are gathered for the copy."""
    import contextlib
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if partitioned:
        import deepspeed
        gathered = deepspeed.zero.GatheredParameters(partitioned)
    with gathered if partitioned else contextlib.nullcontext():
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


def set_rng(seed):
    """Known RNG states, with a Gaussian cached in NumPy's (a state the key alone does not hold)."""
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    np.random.randn()


def draw_rng() -> list:
    return [random.random(), float(np.random.randn()), np.random.rand(2).tolist(), torch.rand(3).tolist()]


@pytest.mark.slow
@pytest.mark.parametrize("backend,stage,bf16", [("torch", 0, False), ("deepspeed", 2, True), ("deepspeed", 3, False)])
def test_resume_equals_the_uninterrupted_run(tmp_path, backend, stage, bf16):
    print(f"seeds: batches {SEED}, {SEED + 1}; RNG {SEED + 2}")
    path = make_checkpoint(tmp_path / "init")
    first, second = varied_batch(path, seed=SEED), varied_batch(path, seed=SEED + 1)
    budget = budget_for(first, 3)
    initial = load_file(f"{path}/model.safetensors")

    straight = learner(path, backend, stage, bf16, budget)          # uninterrupted: two steps
    straight.train_step(first)
    set_rng(SEED + 2)
    draw_rng()
    straight.train_step(second)
    expected = training_state(straight, tmp_path / "straight")
    del straight

    killed = learner(path, backend, stage, bf16, budget)            # one step, checkpoint, gone
    killed.train_step(first)
    set_rng(SEED + 2)
    killed.save(str(tmp_path / "step1"))
    rng_at_save = draw_rng()
    policy_at_save = killed.named_weights()
    del killed

    random.seed(0), np.random.seed(0), torch.manual_seed(0)          # a new process: other RNG states
    resumed = learner(path, backend, stage, bf16, budget)           # from the initial policy, as the trainer does
    resumed.load(str(tmp_path / "step1"))
    assert draw_rng() == rng_at_save                                # as the uninterrupted run drew
    assert not same(resumed.named_weights(), policy_at_save)
    reference = full_state_dict(resumed.reference)
    assert not same(reference, initial)                             # the KL reference is the initial policy
    assert same(reference, {k: v.to(reference[k].dtype) for k, v in policy_at_save.items()})  # ... not step 1's
    resumed.train_step(second)
    got = training_state(resumed, tmp_path / "resumed")
    assert got["scheduler_step"] == 2 and len(got) == len(expected)
    differences = same(got, expected)
    print(f"{backend} ZeRO-{stage} bf16={bf16}: compared {sorted(got)}; differences: {differences[:10]}")
    assert not differences


def test_load_is_strict(tmp_path):
    """A checkpoint missing a tensor is an error, not a silently half-initialised policy."""
    path = make_checkpoint(tmp_path / "init")
    actor = Learner(path, LearnerSection(backend="torch"), AlgorithmSection(), temperature=1.0, total_steps=1)
    actor.save(str(tmp_path / "ckpt"))
    weights = tmp_path / "ckpt" / "policy" / "model.safetensors"
    state = load_file(weights)
    state.pop("model.norm.weight")
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="model.norm.weight"):
        actor.load(str(tmp_path / "ckpt"))
