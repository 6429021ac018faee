"""ZeRO-3 learners built under deepspeed.zero.Init (issue 18): never whole on one device, loaded equal to
the checkpoint, the same step as a ZeRO-0 learner, and a KL reference that stays partitioned but gives
the plainly loaded model's logprobs. DeepSpeed's CPU accelerator over gloo, one rank, float32.

With one rank, "partitioned" means: the parameter's own tensor is empty (`numel() == 0`, status
NOT_AVAILABLE) and its values live in the rank's partition `ds_tensor`; a full copy exists only inside
a gather. Built without zero.Init, a parameter is whole until deepspeed.initialize partitions it, so the
checks on `load_partitioned`'s output (no engine exists yet) would fail.
"""
import pytest
import torch
from safetensors.torch import load_file

from deltarl.model import KimiLinearForCausalLM, char_tokenizer, tiny_config
from deltarl.rl.config import AlgorithmSection, LearnerSection
from deltarl.rl.learner import Learner, response_logprobs
from deltarl.rl.zero import deepspeed_config, load_partitioned
from tests.test_learner import _distributed_env  # noqa: F401 (a fixture)
from tests.test_learner_accumulation import budget_for, max_diff, varied_batch

LR = 1e-5          # as in test_learner_accumulation: float noise in Adam's first step stays under 1e-6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The tiny hybrid with a 2048-token vocabulary: its embedding and lm_head (131k elements) are above
    DeepSpeed's stage3_param_persistence_threshold (100k), so they are released after each use, while
    the smaller parameters stay gathered once used (persistent), as DeepSpeed does for norms."""
    torch.manual_seed(0)
    tok = char_tokenizer()
    path = tmp_path_factory.mktemp("model")
    config = tiny_config(vocab_size=2048, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    KimiLinearForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def batch(checkpoint):
    return varied_batch(checkpoint)       # prints its seed


@pytest.fixture(scope="module")
def zero0_step(checkpoint, batch):
    """A ZeRO-0 learner's weights after one step on `batch` in 3 micro-batches, and its grad norm."""
    actor = learner(checkpoint, 0, budget_for(batch, 3))
    metrics = actor.train_step(batch)
    return actor.named_weights(), metrics["actor/grad_norm"]


def learner(path, stage, budget=4096, offload="none"):
    cfg = LearnerSection(backend="deepspeed", zero_stage=stage, lr=LR, micro_batch_tokens=budget, grad_clip=1.0,
                         offload=offload)
    algo = AlgorithmSection(loss_aggregation="token", kl_coef=0.1, kl_estimator="k3", entropy_coef=0.01, tis_cap=2.0)
    actor = Learner(path, cfg, algo, temperature=1.0, total_steps=10, max_tokens=9)
    assert actor.backend == "deepspeed"
    return actor


def assert_partitioned(model, used=False):
    """Every parameter is an empty placeholder, its values only in this rank's partition. Once the model
    has run a forward (`used`), DeepSpeed keeps the persistent (small) parameters gathered: then the
    others, at least the embedding and lm_head, must be partitioned again."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    params = [p for p in model.parameters() if not (used and p.ds_persist)]
    assert len(params) >= (2 if used else 70)
    for p in params:
        assert p.ds_status == ZeroParamStatus.NOT_AVAILABLE and p.numel() == 0
        assert p.ds_tensor.numel() >= p.ds_numel > 0     # world size 1: the partition holds them all


def test_load_partitioned_builds_under_zero_init(checkpoint):
    """`load_partitioned` alone (no engine): every parameter partitioned, gathered values = the file's."""
    cfg = LearnerSection(backend="deepspeed", zero_stage=3)
    model = load_partitioned(checkpoint, deepspeed_config(cfg))
    assert_partitioned(model)
    import deepspeed
    params = dict(model.named_parameters())
    stored = load_file(f"{checkpoint}/model.safetensors")
    assert set(stored) == set(model.state_dict())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        worst = max((params[n].detach() - stored[n]).abs().max().item() if n in params else
                    (model.get_buffer(n) - stored[n]).abs().max().item() for n in stored)
    print(f"load_partitioned: {len(params)} parameters, max |gathered - checkpoint| {worst:.1e}")
    assert worst == 0.0
    assert_partitioned(model)                                 # released again after the gather


def test_zero3_learner_partitioned_step_and_reference(checkpoint, batch, zero0_step, monkeypatch):
    """The learner builds the policy and the KL reference with `load_partitioned` (each checked the
    moment it returns, before any engine could partition it); right after construction both are
    partitioned and gather to the checkpoint; one step (3 micro-batches) equals ZeRO-0's; the
    reference's logprobs equal those of the model loaded plainly, before and after the step."""
    from transformers import AutoModelForCausalLM

    import deltarl.rl.learner as learner_module
    built = []

    def checked_load(path, ds_config):
        model = load_partitioned(path, ds_config)
        assert_partitioned(model)
        built.append(ds_config)
        return model
    monkeypatch.setattr(learner_module, "load_partitioned", checked_load)
    actor = learner(checkpoint, 3, budget_for(batch, 3))
    assert len(built) == 2 and all(c is actor.ds_config for c in built)    # policy and reference
    assert actor.ds_config == deepspeed_config(actor.cfg) == actor.engine.config    # the engine's config
    assert_partitioned(actor.model)
    assert_partitioned(actor.reference)
    assert actor.reference_engine is not None and actor.ds_config["zero_optimization"]["stage"] == 3
    stored = load_file(f"{checkpoint}/model.safetensors")
    assert max_diff(actor.named_weights(), stored) == 0.0

    plain = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        expected, _ = response_logprobs(plain, batch.prompt_ids, batch.response_ids, 1.0)
    before = actor.reference_logprobs(batch)
    assert_partitioned(actor.reference, used=True)           # the forward gathered and released

    metrics = actor.train_step(batch)
    after = actor.reference_logprobs(batch)
    ref_weights, ref_norm = zero0_step
    step_diff = max_diff(actor.named_weights(), ref_weights)
    moved = max_diff(actor.named_weights(), stored)
    ref_err = max((before - expected).abs().max().item(), (after - expected).abs().max().item())
    print(f"ZeRO-3 (zero.Init) vs ZeRO-0 after one step: max |dw| {step_diff:.2e} (the step moved weights by "
          f"up to {moved:.2e}); grad norm {metrics['actor/grad_norm']:.6f} vs {ref_norm:.6f}; reference "
          f"logprobs vs plain model: max |error| {ref_err:.2e}")
    assert metrics["actor/micro_batches"] == 3
    assert moved > 0.5 * LR
    assert step_diff < 1e-6
    assert metrics["actor/grad_norm"] == pytest.approx(ref_norm, rel=1e-5)
    assert ref_err < 1e-6 and expected.abs().sum() > 0
    assert_partitioned(actor.model, used=True)


@pytest.mark.parametrize("overrides,message", [
    (["learner.offload=cpu"], "learner.offload: 'cpu' is not one of ['none', 'optimizer', 'optimizer_and_params']"),
    (["learner.offload=optimizer_and_params", "learner.zero_stage=2"],
     "learner.offload: 'optimizer_and_params' needs learner.zero_stage 3 (got 2)"),
    (["learner.offload=optimizer", "learner.zero_stage=0"], "learner.offload: 'optimizer' needs learner.zero_stage >= 1"),
    (["learner.offload=optimizer", "learner.backend=torch"], "learner.offload: 'optimizer' needs learner.backend 'deepspeed'"),
])
def test_offload_config_errors_name_the_field(overrides, message):
    from deltarl.rl.config import ConfigError, load_config
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides, check_files=False)
    assert any(line.startswith(message) for line in error.value.errors), error.value.errors


@pytest.mark.parametrize("overrides,zero", [
    ([], {"stage": 2}),
    (["learner.offload=optimizer"], {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": False}}),
    (["learner.offload=optimizer_and_params", "learner.zero_stage=3"],
     {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": False},
      "offload_param": {"device": "cpu", "pin_memory": False}}),
])
def test_offload_maps_to_deepspeed_config(overrides, zero):
    """On this CPU machine pin_memory is off (there is no GPU to copy to)."""
    from deltarl.rl.config import load_config
    assert not torch.cuda.is_available()
    cfg = load_config(None, overrides, check_files=False).learner
    assert deepspeed_config(cfg)["zero_optimization"] == zero


@pytest.mark.slow
@pytest.mark.parametrize("stage,offload", [(2, "optimizer"), (3, "optimizer_and_params")])
def test_offload_takes_the_same_step(checkpoint, batch, zero0_step, stage, offload):
    """ZeRO-Offload on DeepSpeed's CPU accelerator: DeepSpeedCPUAdam (a C++ op DeepSpeed compiles on
    first use, ~2.5 min on 2 cores, cached after) steps the host copy; the step equals ZeRO-0's."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    actor = learner(checkpoint, stage, budget_for(batch, 3), offload=offload)
    assert isinstance(actor.optimizer, DeepSpeedCPUAdam)
    assert actor.engine.zero_offload_optimizer()
    assert bool(actor.engine.zero_offload_param()) == (offload == "optimizer_and_params")
    metrics = actor.train_step(batch)
    ref_weights, ref_norm = zero0_step
    diff = max_diff(actor.named_weights(), ref_weights)
    print(f"ZeRO-{stage} offload={offload} vs ZeRO-0: max |dw| {diff:.2e}, grad norm "
          f"{metrics['actor/grad_norm']:.6f} vs {ref_norm:.6f}")
    assert diff < 1e-6
    assert metrics["actor/grad_norm"] == pytest.approx(ref_norm, rel=1e-5)
