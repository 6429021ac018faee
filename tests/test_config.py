"""rl.config: defaults, YAML + dotted overrides, every kind of error naming its field, round trip, speed."""
import dataclasses
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import yaml

from deltarl.rl import algorithms
from deltarl.rl.config import (ADVANTAGES, BUILTIN_REWARDS, IS_CORRECTIONS, KL_ESTIMATORS, LOSS_AGGREGATIONS,
                               ConfigError, RewardFunction, RunConfig, config_to_dict, load_config, save_config)

REPO = Path(__file__).resolve().parents[1]


def write_yaml(tmp_path, data, name="cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def error_of(path=None, overrides=(), **kw) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides), **kw)
    return str(info.value)


# --- loading ------------------------------------------------------------------------------------

def test_defaults_load():
    cfg = load_config(None, [])
    assert cfg == RunConfig()
    assert cfg.run.name == "deltarl" and cfg.run.steps == 100 and cfg.run.resume is None
    assert cfg.run.log.tensorboard and cfg.run.log.jsonl and not cfg.run.log.wandb
    assert cfg.tokenizer == "builtin:char"
    assert cfg.rollout.n == 8 and cfg.rollout.top_k == -1 and cfg.rollout.eval_n == 4
    assert cfg.algorithm.clip_low == 0.2 and cfg.algorithm.clip_high == 0.28
    assert cfg.learner.zero_stage == 2 and cfg.learner.betas == [0.9, 0.999]
    assert cfg.reward.functions == [RewardFunction(name="accuracy", fn="arithmetic")]
    assert cfg.data.columns == {"prompt": "prompt", "answer": "answer"}


def test_empty_file_and_empty_section_mean_defaults(tmp_path):
    assert load_config(write_yaml(tmp_path, ""), []) == RunConfig()
    assert load_config(write_yaml(tmp_path, "rollout:\n  # n: 4\n"), []) == RunConfig()


def test_yaml_and_overrides_merge(tmp_path):
    path = write_yaml(tmp_path, {
        "run": {"name": "arith", "log": {"wandb": True}},
        "rollout": {"n": 4, "temperature": 0.7},
        "learner": {"lr": "3e-6"},                 # YAML 1.1 reads 3e-6 as text: taken as a float
        "data": {"columns": {"prompt": "question"}},
    })
    cfg = load_config(path, ["rollout.n=2", "algorithm.clip_high=0.3", "model.init.hidden_size=32",
                             "reward.functions=[{name: acc, fn: arithmetic}, math]",
                             "reward.functions[1].weight=0.5", "run.resume=null"])
    assert cfg.run.name == "arith" and cfg.run.log.wandb and cfg.run.log.tensorboard  # merged
    assert cfg.rollout.n == 2 and cfg.rollout.temperature == 0.7 and cfg.rollout.top_p == 1.0
    assert cfg.learner.lr == 3e-6 and cfg.algorithm.clip_high == 0.3
    assert cfg.model.init == {"hidden_size": 32}
    assert cfg.data.columns == {"prompt": "question"}          # a YAML mapping value replaces whole
    assert [(f.name, f.fn, f.weight) for f in cfg.reward.functions] == [
        ("acc", "arithmetic", 1.0), ("math", "math", 0.5)]


def test_dotted_override_into_a_mapping_field_keeps_its_other_keys():
    cfg = load_config(None, ["data.columns.prompt=question"])
    assert cfg.data.columns == {"prompt": "question", "answer": "answer"}


def test_vllm_kwargs_take_nested_overrides():
    cfg = load_config(None, ["rollout.engine=vllm", "rollout.vllm_kwargs.max_num_seqs=128",
                             "rollout.vllm_kwargs.compilation_config.cudagraph_capture_sizes=[1, 8, 64]"])
    assert cfg.rollout.vllm_kwargs == {"max_num_seqs": 128, "compilation_config": {"cudagraph_capture_sizes": [1, 8, 64]}}


def test_int_accepted_for_float_and_stored_as_float():
    cfg = load_config(None, ["algorithm.clip_high=1", "rollout.temperature=2"])
    assert cfg.algorithm.clip_high == 1.0 and isinstance(cfg.algorithm.clip_high, float)
    assert isinstance(cfg.rollout.temperature, float)


def test_builtin_reward_names_match_the_rewards_package():
    from deltarl.rewards.api import BUILTINS
    assert set(BUILTIN_REWARDS) == set(BUILTINS)


def test_reward_entries_are_what_rewards_reward_spec_takes():
    from deltarl.rewards.api import RewardSpec
    cfg = load_config(None, ["reward.functions=[math, {fn: format, weight: 0.1, timeout: 3, "
                             "kwargs: {style: boxed}, isolated: true}]"])
    specs = [RewardSpec.from_config(dataclasses.asdict(f)) for f in cfg.reward.functions]
    assert [(s.name, s.fn, s.weight, s.timeout_s, s.kwargs, s.isolated) for s in specs] == [
        ("math", "math", 1.0, 10.0, {}, False), ("format", "format", 0.1, 3.0, {"style": "boxed"}, True)]


def test_algorithm_choices_exist_in_rl_algorithms():
    assert set(ADVANTAGES) <= set(algorithms.ESTIMATORS)
    assert set(LOSS_AGGREGATIONS) <= set(algorithms.AGGREGATIONS)
    assert set(KL_ESTIMATORS) <= set(algorithms.KL_ESTIMATORS)
    assert set(IS_CORRECTIONS) == set(algorithms.IS_CORRECTIONS)


def _leaves(cls, prefix=""):
    """Dotted names of every field of a config dataclass (list items as [i])."""
    for f in dataclasses.fields(cls):
        name, tp = prefix + f.name, typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _leaves(tp, name + ".")
        else:
            yield name
            args = typing.get_args(tp)
            if args and dataclasses.is_dataclass(args[0]):
                yield from _leaves(args[0], name + "[i].")


def test_every_field_is_documented():
    text = (REPO / "docs" / "config.md").read_text()
    missing = [name for name in _leaves(RunConfig) if f"| `{name}` |" not in text]
    assert not missing, f"fields missing from docs/config.md: {missing}"


# --- errors -------------------------------------------------------------------------------------

def test_unknown_key_in_override_suggests_the_nearest():
    msg = error_of(overrides=["rollout.temprature=0.7"])
    assert "unknown key 'rollout.temprature'; did you mean 'rollout.temperature'?" in msg
    assert "max_tokens" in msg                                   # the allowed keys are listed


def test_unknown_key_in_yaml_suggests_the_nearest(tmp_path):
    msg = error_of(write_yaml(tmp_path, {"algorithm": {"clip_hgih": 0.3}}))
    assert "unknown key 'algorithm.clip_hgih'; did you mean 'algorithm.clip_high'?" in msg


def test_unknown_section_suggests_the_nearest_section(tmp_path):
    msg = error_of(overrides=["rolout.n=4"])
    assert "unknown key 'rolout'; did you mean 'rollout'?" in msg
    msg = error_of(write_yaml(tmp_path, {"lerner": {"lr": 1e-5}}))
    assert "did you mean 'learner'?" in msg


def test_unknown_key_without_a_near_one_lists_the_allowed_keys():
    msg = error_of(overrides=["run.zzz=1"])
    assert "unknown key 'run.zzz'" in msg and "did you mean" not in msg
    assert "Allowed keys of run: name, output_dir, seed" in msg


def test_unknown_key_inside_a_list_item():
    msg = error_of(overrides=["reward.functions=[{fn: math, wieght: 2}]"])
    assert "unknown key 'reward.functions[0].wieght'; did you mean 'reward.functions[0].weight'?" in msg


@pytest.mark.parametrize("override, message", [
    ("rollout.n=four", "rollout.n: expected int, got str 'four'"),
    ("rollout.n=2.5", "rollout.n: expected int, got float 2.5"),
    ("learner.zero_stage=true", "learner.zero_stage: expected int, got bool True"),   # bools aren't ints
    ("algorithm.kl_coef=yes", "algorithm.kl_coef: expected float, got bool True"),
    ("run.progress_bar=1", "run.progress_bar: expected bool, got int 1"),
    ("algorithm.tis_cap=big", "algorithm.tis_cap: expected float or null, got str 'big'"),
    ("learner.betas=[0.9, x]", "learner.betas[1]: expected float, got str 'x'"),
    ("data.columns={prompt: 3}", "data.columns.prompt: expected str, got int 3"),
    ("reward.functions=math", "reward.functions: expected list of mapping or str, got str 'math'"),
    ("rollout=5", "rollout: expected mapping, got int 5"),
    ("run.name=2024", "run.name: expected str, got int 2024 (YAML read it as int; quote it"),
])
def test_wrong_type_names_the_field(override, message):
    assert message in error_of(overrides=[override])


@pytest.mark.parametrize("override, message", [
    ("algorithm.advantage=ppo", "algorithm.advantage: 'ppo' is not one of ['grpo', 'drgrpo', 'rloo', "
                                "'reinforce_pp', 'reinforce_pp_baseline']"),
    ("rollout.temperature=-0.1", "rollout.temperature: must be > 0"),
    ("rollout.temperature=0", "rollout.temperature: must be > 0: the learner divides the logits by it"),
    ("rollout.eval_temperature=0", "rollout.eval_temperature: must be > 0"),
    ("algorithm.clip_low=1", "algorithm.clip_low: must be in [0, 1)"),
    ("rollout.top_p=0", "rollout.top_p: must be in (0, 1]"),
    ("rollout.top_k=0", "rollout.top_k: must be -1 (off) or >= 1"),
    ("learner.zero_stage=4", "learner.zero_stage: must be in [0, 3]"),
    ("learner.lr=0", "learner.lr: must be > 0"),
    ("learner.betas=[0.9]", "learner.betas: must be two numbers"),
    ("model.dtype=fp8", "model.dtype: 'fp8' is not one of ['float32', 'bfloat16', 'float16']"),
    ("algorithm.loss_aggregation=mean", "algorithm.loss_aggregation: 'mean' is not one of"),
    ("algorithm.kl_estimator=k4", "algorithm.kl_estimator: 'k4' is not one of ['k1', 'k2', 'k3']"),
    ("ray.placement=spread", "ray.placement: 'spread' is not one of ['colocated', 'split']"),
    ("data.task=sudoku", "data.task: 'sudoku' is not one of ['arithmetic', 'countdown', 'math_word', 'code_io']"),
    ("tokenizer=builtin:bytes", "tokenizer: 'builtin:bytes' is not one of ['builtin:char']"),
    ("algorithm.tis_cap=0.5", "algorithm.tis_cap: must be >= 1"),
    ("run.steps=0", "run.steps: must be >= 1"),
    ("reward.functions=[]", "reward.functions: must list at least one reward function"),
    ("reward.functions=[mth]", "reward.functions[0].fn: 'mth' is not a built-in reward"),
    ("reward.functions=[{fn: math, timeout: 0}]", "reward.functions[0].timeout: must be > 0"),
    ("reward.functions=[math, math]", "reward.functions[1].name: 'math' is used twice"),
])
def test_out_of_range_or_choices_names_the_field(override, message):
    assert message in error_of(overrides=[override])


def test_typo_in_builtin_reward_suggests_the_nearest():
    assert "did you mean 'math'?" in error_of(overrides=["reward.functions=[mth]"])


@pytest.mark.parametrize("overrides, message", [
    (["rollout.n=1"], "rollout.n: must be >= 2 for algorithm.advantage='grpo'"),
    (["algorithm.overlong_buffer=65"], "algorithm.overlong_buffer: must be <= rollout.max_tokens (64)"),
    (["rollout.n=1", "algorithm.advantage=reinforce_pp_baseline"], "rollout.n: must be >= 2"),
    (["learner.micro_batch_tokens=32"], "learner.micro_batch_tokens: must be >= rollout.max_tokens (64)"),
    (["data.path=x.jsonl"], "data.path: cannot be used together with data.task='arithmetic'"),
    (["data.task=null"], "data.task: is null and so is data.path"),
    (["model.path=ckpt", "model.init={hidden_size: 32}"], "model.init: is only used to build a fresh model"),
    (["rollout.max_model_len=64"], "rollout.max_model_len: must be > rollout.max_tokens (64)"),
    (["rollout.vllm_kwargs.max_num_seqs=8"], "rollout.vllm_kwargs: is for rollout.engine=vllm (this run's engine: "
                                             "'embedded')"),
    (["rollout.engine=vllm", "rollout.vllm_kwargs.seed=3"], "rollout.vllm_kwargs.seed: deltarl sets it"),
    (["rollout.engine=vllm", "rollout.vllm_kwargs.max_model_len=9"],
     "rollout.vllm_kwargs.max_model_len: deltarl sets it (set rollout.max_model_len)"),
])
def test_fields_that_contradict_each_other(overrides, message):
    assert message in error_of(overrides=overrides, check_files=False)


@pytest.mark.parametrize("advantage", ["grpo", "drgrpo", "rloo"])
def test_kl_as_a_reward_with_a_group_estimator_fails_naming_both_fields(advantage):
    errors = error_of(overrides=["algorithm.kl_mode=reward", "algorithm.kl_coef=0.05",
                                 f"algorithm.advantage={advantage}"])
    assert errors.startswith("algorithm.kl_mode: 'reward' needs a per-token return estimator")
    assert f"algorithm.advantage={advantage!r}" in errors and "algorithm.kl_mode=loss" in errors


@pytest.mark.parametrize("advantage", ["reinforce_pp", "reinforce_pp_baseline"])
def test_kl_as_a_reward_runs_with_a_return_estimator_and_defaults_to_no_fixed_estimator(advantage):
    cfg = load_config(None, ["algorithm.kl_mode=reward", "algorithm.kl_coef=0.05", f"algorithm.advantage={advantage}"])
    assert cfg.algorithm.kl_estimator is None          # null: k1 as a reward, k3 as a loss (rl.algorithms.kl)
    assert load_config(None, ["algorithm.kl_estimator=k2"]).algorithm.kl_estimator == "k2"


def test_eval_temperature_defaults_to_the_rollout_temperature():
    assert load_config(None, []).rollout.eval_temperature is None
    assert load_config(None, ["rollout.eval_temperature=0.6"]).rollout.eval_temperature == 0.6


def test_reinforce_pp_runs_with_one_sample_per_prompt():
    assert load_config(None, ["rollout.n=1", "algorithm.advantage=reinforce_pp"]).rollout.n == 1


def test_missing_local_paths_fail_early_unless_told_not_to_check(tmp_path):
    overrides = ["data.task=null", f"data.path={tmp_path / 'nope.jsonl'}", "reward.functions=['my.py:score']"]
    msg = error_of(overrides=overrides)
    assert "data.path: file or folder" in msg and "nope.jsonl' not found" in msg
    assert "reward.functions[0].fn: file 'my.py' not found" in msg
    assert load_config(None, overrides, check_files=False).data.path.endswith("nope.jsonl")


@pytest.mark.parametrize("override", ["rollout.n", "=4", "rollout..n=4", "rollout n=4"])
def test_malformed_override(override):
    msg = error_of(overrides=[override])
    assert f"malformed override {override!r}: expected KEY=VALUE" in msg


def test_override_with_bad_yaml_value_or_path():
    assert "cannot parse the value as YAML" in error_of(overrides=["reward.functions=[{fn: math"])
    assert "rollout.n is a value (int 8), not a section" in error_of(overrides=["rollout.n.x=3"])
    assert "reward.functions[3]: no such item" in error_of(overrides=["reward.functions[3].weight=2"])


def test_bad_config_file(tmp_path):
    assert "not valid YAML" in error_of(write_yaml(tmp_path, "run: [unclosed\n"))
    assert "expected a mapping of sections" in error_of(write_yaml(tmp_path, "- 1\n- 2\n"))
    assert "config file" in error_of(tmp_path / "missing.yaml")


def test_all_problems_are_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write_yaml(tmp_path, {"rollout": {"n": "four", "top_p": 2}}),
                    ["algorithm.advantage=ppo", "learner.lrr=1"])
    errors = info.value.errors
    assert any(e.startswith("rollout.n: expected int") for e in errors)
    assert "rollout.top_p: must be in (0, 1]" in errors
    assert any(e.startswith("algorithm.advantage: 'ppo' is not one of") for e in errors)
    assert any(e.startswith("unknown key 'learner.lrr'") for e in errors)
    assert len(errors) == 4 and isinstance(info.value, ValueError)


def test_a_mistyped_field_gives_one_line_not_a_cascade():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["reward.functions=[{fn: 3}]"])
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith("reward.functions[0].fn: expected str, got int 3")


# --- saving, speed ------------------------------------------------------------------------------

def test_save_then_load_gives_an_equal_config(tmp_path):
    cfg = load_config(None, ["run.name=rt", "rollout.n=4", "learner.lr=2e-6", "algorithm.tis_cap=null",
                             "model.init={num_layers: 2, hidden_size: 32}", "ray.num_gpus=2",
                             "reward.functions=[math, {fn: format, weight: 0.1, kwargs: {style: boxed}}]"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(path, [])
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)
    assert yaml.safe_load(path.read_text())["rollout"]["n"] == 4


def test_a_bad_config_fails_in_well_under_a_second(tmp_path):
    path = write_yaml(tmp_path, {"rollout": {"temprature": 0.7}, "learner": {"zero_stage": 9}})
    start = time.perf_counter()
    with pytest.raises(ConfigError):
        load_config(path, ["rollout.n=four", "algorithm.advantage=ppo"])
    assert time.perf_counter() - start < 0.2


def test_importing_rl_config_is_light():
    code = ("import sys, time; t = time.perf_counter(); import deltarl.rl.config; "
            "print(time.perf_counter() - t, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    seconds, torch_loaded = out.stdout.split()
    assert torch_loaded == "False" and float(seconds) < 1.0
