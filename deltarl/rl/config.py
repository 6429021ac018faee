"""Run configuration: a YAML file plus dotted command-line overrides, checked before anything starts.

    cfg = load_config("configs/arithmetic.yaml", ["rollout.n=4", "algorithm.clip_high=0.3"])
    cfg.rollout.n          # 4
    save_config(cfg, run_dir / "config.yaml")   # the resolved config; load_config() of it is equal

One plain dataclass per section, nested in `RunConfig`. Loading is three steps: the file's values
replace the defaults (a section merges key by key, any other value is replaced whole), each override
`a.b.c=VALUE` sets one leaf (VALUE parsed by `yaml.safe_load`, so lists, mappings, null and bools
work), then the tree is built into dataclasses. Every problem found on the way (an unknown key, a
wrong type, a value out of range, two fields that contradict each other, a file that is not there)
is collected and raised as one `ConfigError` whose lines each name the full dotted field.

This module imports only the standard library and PyYAML, so a bad config fails in milliseconds.
The fields and their meaning are in docs/config.md.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

# Choices that several checks and the docs share (those of rl.algorithms are checked against it by
# tests/test_config.py; it is not imported here because it imports torch).
DTYPES = ("float32", "bfloat16", "float16")
TASKS = ("arithmetic", "countdown", "math_word", "code_io")
ENGINES = ("embedded", "vllm")
ADVANTAGES = ("grpo", "drgrpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
OUTCOME_ADVANTAGES = ("grpo", "drgrpo", "rloo")     # one advantage per sample: no per-token rewards
LOSS_AGGREGATIONS = ("token", "sequence", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
KL_MODES = ("loss", "reward")
BACKENDS = ("deepspeed", "torch")
OFFLOADS = ("none", "optimizer", "optimizer_and_params")
PLACEMENTS = ("colocated", "split")
PLACEMENT_STRATEGIES = ("PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD")    # Ray's placement group strategies
WEIGHT_SYNCS = ("auto", "object_store", "broadcast", "ipc")
# vllm.LLM arguments deltarl sets itself, so rollout.vllm_kwargs may not: where to set each instead, or why
VLLM_SET_BY_DELTARL = {
    "model": "the policy checkpoint of the run", "tokenizer": "the policy checkpoint's tokenizer",
    "dtype": "bfloat16 always", "seed": "rollout seeds travel with each request",
    "gpu_memory_utilization": "set rollout.gpu_memory_utilization", "enforce_eager": "set rollout.enforce_eager",
    "max_model_len": "set rollout.max_model_len",
    "enable_prefix_caching": "off: a hybrid's recurrent state cannot be shared between sequences",
    "enable_sleep_mode": "on: colocated engines release their memory while the learner trains",
    "logprobs_mode": "processed_logprobs: the learner's correction needs the sampled distribution's",
    "worker_extension_cls": "deltarl's weight-sync extension",
}
IS_CORRECTIONS = ("tis", "mask_token", "mask_sequence", "none")     # rl.algorithms.off_policy's
PROXIMALS = ("learner", "rollout")
STALE_SAMPLES = ("correct", "drop")
BUILTIN_TOKENIZERS = ("builtin:char",)
# Mirrors rewards.api.BUILTINS (tests/test_config.py checks that they agree); not imported because
# importing rewards pulls in math-verify and sympy, which would make a config check slow.
BUILTIN_REWARDS = ("arithmetic", "code", "countdown", "format", "math")


class ConfigError(ValueError):
    """A config that cannot run. `errors` holds one line per problem, each naming its dotted field."""

    def __init__(self, errors: list[str] | str):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


# --- the schema ---------------------------------------------------------------------------------

@dataclass
class LogConfig:
    """Where metrics go. JSONL and TensorBoard need nothing more; W&B and MLflow are used only
    when enabled and installed (a warning otherwise)."""
    tensorboard: bool = True
    wandb: bool = False
    mlflow: bool = False
    jsonl: bool = True
    project: str = "deltarl"    # W&B project / MLflow experiment


@dataclass
class RunSection:
    name: str = "deltarl"
    output_dir: str = "runs"
    seed: int = 0
    steps: int = 100
    save_every: int = 10        # 0: only the final checkpoint
    eval_every: int = 10        # 0: no evaluation during training
    resume: str | None = None   # a run directory to continue from; "auto": this run's newest, if any
    max_restarts: int = 3       # failures in a row of one actor (engine, learner group) the run survives
    log: LogConfig = field(default_factory=LogConfig)
    progress_bar: bool = True


@dataclass
class ModelSection:
    path: str | None = None     # a checkpoint folder; None builds a fresh model from `init`
    init: dict = field(default_factory=dict)   # keyword arguments of model.tiny_config
    dtype: str = "float32"
    gradient_checkpointing: bool = False


@dataclass
class ExtraTrain:
    """More training rows of the built-in task from other options (the held-out set is unchanged)."""
    size: int = 1000                  # rows generated (held-out prompts are then removed)
    difficulty: int = 1
    task_options: dict = field(default_factory=dict)


@dataclass
class DataSection:
    task: str | None = "arithmetic"   # a built-in task, or None to read `path`
    path: str | None = None           # JSONL / JSON / Parquet file or HF datasets folder
    eval_path: str | None = None      # held-out prompts for `path`; None splits off eval_size rows
    columns: dict[str, str] = field(default_factory=lambda: {"prompt": "prompt", "answer": "answer"})
    system_prompt: str | None = None
    difficulty: int = 1
    task_options: dict = field(default_factory=dict)   # extra keyword arguments of the task
    train_size: int = 2000
    extra_train: list[ExtraTrain] = field(default_factory=list)   # more training rows, other difficulty/options
    eval_size: int = 200
    eval_seed: int | None = None      # seed of a built-in task's eval set; None: run.seed + 10000
    apply_chat_template: bool = True
    shuffle: bool = True


@dataclass
class RolloutSection:
    engine: str = "embedded"
    num_workers: int = 1
    n: int = 8                  # samples per prompt (the group size)
    prompts_per_step: int = 16
    temperature: float = 1.0    # > 0: the learner divides the logits by it
    top_p: float = 1.0
    top_k: int = -1             # -1: off
    max_tokens: int = 64        # response tokens per sample
    ignore_eos: bool = False    # decode max_tokens whatever the model emits (fixed work per sample: benchmarks)
    max_batch_size: int = 64    # sequences decoded at once per worker
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = False
    max_model_len: int | None = None    # vLLM's context (prompt + response tokens); null: longest prompt + max_tokens
    vllm_kwargs: dict = field(default_factory=dict)   # more keyword arguments of vllm.LLM (max_num_seqs, ...)
    weight_sync: str = "auto"   # learner -> engines: auto, object_store, broadcast (bucketed), ipc
    weight_sync_bucket_mb: float = 512   # broadcast: bucket size in MiB
    eval_temperature: float | None = None   # temperature of the pass@k samples; null: rollout.temperature
    eval_n: int = 4             # samples per eval prompt, for pass@k
    partial: bool = False       # partial rollouts: a sequence pauses after partial_tokens and resumes next round
    partial_tokens: int | None = None   # tokens a sequence decodes per round with partial; null: max_tokens // 4
    gpus_per_worker: float | None = None   # GPUs of each engine; None: 1 where the cluster has GPUs, 0 on the CPU


@dataclass
class RewardFunction:
    """One reward term: total reward = sum of weight * fn(prompt, response, **row).
    The fields are those of rewards.RewardSpec.from_config, which takes asdict() of this."""
    name: str = ""              # metric name; "" derives it from fn
    fn: str = ""                # a built-in name, "module:function" or "path/to/file.py:function"
    weight: float = 1.0
    timeout: float = 10.0       # seconds per call; a timeout scores 0 and is counted
    kwargs: dict = field(default_factory=dict)   # extra keyword arguments of every call
    batched: bool | None = None  # None: as the function is marked (rewards.batched)
    isolated: bool = False      # run each call in a worker process killed at the deadline

    def __post_init__(self):
        if not self.name and isinstance(self.fn, str):
            self.name = self.fn if self.fn in BUILTIN_REWARDS else self.fn.rpartition(":")[2]

    @classmethod
    def from_string(cls, fn: str) -> RewardFunction:
        """`functions: [math]` is short for `functions: [{fn: math}]`."""
        return cls(fn=fn)


@dataclass
class RewardSection:
    functions: list[RewardFunction] = field(
        default_factory=lambda: [RewardFunction(name="accuracy", fn="arithmetic")])
    num_workers: int = 0              # reward worker actors (rl.reward_workers); 0 scores in the driver
    cpus_per_worker: float = 1.0      # Ray CPUs each worker asks, beside the rollout and learner bundles
    chunk_size: int | None = None     # samples per chunk; null: 4 chunks per worker and batch


@dataclass
class AlgorithmSection:
    advantage: str = "grpo"
    clip_low: float = 0.2
    clip_high: float = 0.28
    loss_aggregation: str = "token"
    kl_coef: float = 0.0
    # null: the estimator's default for its use (rl.algorithms.kl): k3 as a loss, k1 as a reward
    kl_estimator: str | None = None
    kl_mode: str = "loss"
    entropy_coef: float = 0.0
    dynamic_sampling: bool = False
    overlong_buffer: int = 0    # tokens before max_tokens where the soft length penalty starts
    overlong_penalty: float = 1.0
    tis_cap: float | None = 2.0   # C, the importance-ratio bound of is_correction; null: no correction
    is_correction: str = "tis"  # tis: min(r, C); mask_token / mask_sequence: r, 0 outside [1/C, C]; none
    proximal: str = "learner"   # learner: decoupled PPO (clip around the learner's logprobs); rollout: coupled
    max_staleness: int = 0      # rollouts generated up to this many weight versions ahead of training (0: sync)
    stale_samples: str = "correct"   # groups older than max_staleness (partial rollouts): correct (keep) or drop
    ppo_epochs: int = 1
    mini_batches: int = 1


@dataclass
class LearnerSection:
    backend: str = "deepspeed"
    zero_stage: int = 2
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float | None = 1.0
    warmup_steps: int = 0
    micro_batch_tokens: int = 4096
    bf16: bool = False
    offload: str = "none"       # none | optimizer | optimizer_and_params (ZeRO-3): DeepSpeed's host offload
    threads: int | None = None  # torch CPU threads of a learner actor; None: Ray's (the actor's num_cpus)
    num_workers: int = 1        # data-parallel learner ranks (Ray actors, one DeepSpeed rank each)
    gpus_per_worker: float | None = None   # GPUs of each rank; None: 1 where the cluster has GPUs, 0 on the CPU


@dataclass
class RaySection:
    address: str | None = None  # None: a local Ray, unless RAY_ADDRESS is set
    num_cpus: int | None = None
    num_gpus: int | None = None
    placement: str = "colocated"     # colocated: engine i beside learner rank i in one bundle; split: a bundle each
    placement_strategy: str = "PACK"  # how Ray spreads the bundles over nodes: PACK, STRICT_PACK, SPREAD, STRICT_SPREAD
    placement_timeout_s: float = 120  # give up (naming the fields) when the cluster cannot hold the bundles by then


@dataclass
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: str = "builtin:char"
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    reward: RewardSection = field(default_factory=RewardSection)
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    learner: LearnerSection = field(default_factory=LearnerSection)
    ray: RaySection = field(default_factory=RaySection)


# --- public API ---------------------------------------------------------------------------------

def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = (),
                *, check_files: bool = True) -> RunConfig:
    """The config of a run: defaults, then the YAML file at `path` (if any), then `overrides`.

    Raises ConfigError listing every problem. `check_files=False` skips the checks that local
    paths (model, data, tokenizer, resume, reward files) exist, e.g. for a config that will run
    on another machine.
    """
    tree = config_to_dict(RunConfig())
    errors: list[str] = []
    if path is not None:
        _merge(tree, _read_yaml(path), RunConfig)
    for override in overrides:
        try:
            tree = _normalized(tree)
            _apply_override(tree, override)
        except ConfigError as e:
            errors.extend(e.errors)
    cfg = _build(RunConfig, tree, "", errors)
    _check(cfg, errors, check_files)    # a field of the wrong type kept its (valid) default
    if errors:
        raise ConfigError(errors)
    return cfg


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain nested dicts and lists (what save_config writes and W&B/MLflow record)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, so a run directory says exactly what ran."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    path.write_text("# Resolved deltarl config: load_config() of this file gives the same run.\n" + text)
    return path


# --- reading and merging ------------------------------------------------------------------------

def _read_yaml(path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"config file {str(path)!r}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping of sections, "
                          f"got {_show(data)}")
    return data


def _merge(tree: dict, data: dict, cls) -> None:
    """Put `data` over `tree`: sections (dataclass fields) merge key by key, other values replace.
    Unknown keys are copied as they are, so that building reports them with their full name."""
    hints = _hints(cls)
    for key, value in data.items():
        section = hints.get(key)
        if dataclasses.is_dataclass(section) and value is None:
            continue    # a section whose keys are all commented out
        if dataclasses.is_dataclass(section) and isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value, section)
        else:
            tree[key] = value


def _normalized(tree: dict) -> dict:
    """`tree` with shorthands expanded (`functions: [math]` -> [{name: math, fn: math, ...}]) when
    it builds cleanly, so that an override can reach into it (reward.functions[0].weight=0.5)."""
    errors: list[str] = []
    cfg = _build(RunConfig, tree, "", errors)
    return tree if errors else config_to_dict(cfg)


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_@-]+|\[\d+\])*$")


def _apply_override(tree: dict, override: str) -> None:
    """Set one leaf of `tree` from "a.b.c=VALUE"; list items are "a.b[0].c" or "a.b.0.c"."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise ConfigError(f"malformed override {override!r}: expected KEY=VALUE with a dotted key, "
                          "e.g. rollout.n=4 or reward.functions[0].weight=0.5")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: cannot parse the value as YAML: "
                          f"{str(e).splitlines()[0]}") from None
    parts = key.replace("[", ".").replace("]", "").split(".")
    node, where = tree, ""
    for part in parts[:-1]:
        where = f"{where}[{part}]" if isinstance(node, list) else _join(where, part)
        node = _child(node, part, where, override)
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, f"{where}[{last}]", override)] = value
    else:
        node[last] = value


def _child(node, part: str, where: str, override: str):
    """The value under `part` of a mapping or list while walking an override's key; a missing or
    null one becomes {} (building then reports an unknown key with its full name)."""
    if isinstance(node, dict):
        if node.get(part) is None:
            node[part] = {}
        child = node[part]
    else:
        child = node[_index(node, part, where, override)]
    if not isinstance(child, (dict, list)):
        raise ConfigError(f"override {override!r}: {where} is a value ({_show(child)}), not a section")
    return child


def _index(node: list, part: str, where: str, override: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {override!r}: {where}: no such item "
                          f"(the list has {len(node)} items, indices 0..{len(node) - 1})")
    return int(part)


# --- building dataclasses, with type checks -----------------------------------------------------

_BAD = object()         # a value that failed its type check: the field keeps its default
_NoneType = type(None)
_FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class _Mismatch(Exception):
    pass


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict[str, Any]:
    """Field name -> type of a dataclass (the annotations are strings until resolved here)."""
    return typing.get_type_hints(cls)


def _build(cls, data, where: str, errors: list[str]):
    """An instance of dataclass `cls` from a mapping; unknown keys and type errors go to `errors`."""
    if not isinstance(data, dict):
        raise _Mismatch
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = _join(where, str(key))
        if key not in hints:
            errors.append(_unknown_key(name, list(hints), where))
            continue
        value = _coerce(value, hints[key], name, errors)
        if value is not _BAD:
            kwargs[key] = value
    return cls(**kwargs)


def _coerce(value, tp, name: str, errors: list[str]):
    """`value` as type `tp`, or _BAD after recording "name: expected T, got ..."."""
    try:
        return _convert(value, tp, name, errors)
    except _Mismatch:
        hint = ""
        if "str" in _describe(tp) and isinstance(value, (bool, int, float)):
            hint = f" (YAML read it as {type(value).__name__}; quote it to keep it text)"
        errors.append(f"{name}: expected {_describe(tp)}, got {_show(value)}{hint}")
        return _BAD


def _convert(value, tp, name: str, errors: list[str]):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):          # only "X | None" is used
        if value is None:
            return None
        return _convert(value, next(a for a in args if a is not _NoneType), name, errors)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and hasattr(tp, "from_string"):
            return tp.from_string(value)
        return _build(tp, value, name, errors)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):   # YAML reads 1e-5 as text
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if tp is dict or origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _Mismatch
        if not args:
            return dict(value)
        out = {k: _coerce(v, args[1], f"{name}.{k}", errors) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not _BAD}
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        out = [_coerce(v, args[0], f"{name}[{i}]", errors) for i, v in enumerate(value)]
        return [v for v in out if v is not _BAD]
    raise TypeError(f"config schema: unsupported type {tp!r} of {name}")


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not _NoneType) + " or null"
    if dataclasses.is_dataclass(tp):
        return "mapping" + (" or str" if hasattr(tp, "from_string") else "")
    if tp is dict or origin is dict:
        return "mapping" + (f" of {_describe(args[1])}" if args else "")
    if origin is list:
        return f"list of {_describe(args[0])}"
    return tp.__name__


def _show(value) -> str:
    """`str 'four'`, `null`, `list [1, 2]`: the type and a short repr, for error messages."""
    if value is None:
        return "null"
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _unknown_key(name: str, allowed: list[str], where: str) -> str:
    """"unknown key 'rollout.temprature'; did you mean 'rollout.temperature'? Allowed keys of ..."."""
    key = name.rpartition(".")[2] if where else name
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"; did you mean '{_join(where, close[0])}'?" if close else ""
    scope = f"keys of {where}" if where else "top-level keys"
    return f"unknown key '{name}'{hint} Allowed {scope}: {', '.join(allowed)}"


# --- value checks -------------------------------------------------------------------------------

class _Checker:
    """Small helpers that append "field: problem" lines to a list of errors."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        self.mistyped = {e.partition(": ")[0] for e in errors}   # kept their defaults: no second line

    def fail(self, name: str, problem: str):
        if name not in self.mistyped:
            self.errors.append(f"{name}: {problem}")

    def one_of(self, name: str, value, choices):
        if value not in choices:
            self.fail(name, f"{value!r} is not one of {list(choices)}")

    def at_least(self, name: str, value, low):
        if value is not None and value < low:
            self.fail(name, f"must be >= {low}")

    def above(self, name: str, value, low):
        if value is not None and value <= low:
            self.fail(name, f"must be > {low}")

    def within(self, name: str, value, low, high, *, high_open=False, low_open=False):
        lo_ok = value > low if low_open else value >= low
        hi_ok = value < high if high_open else value <= high
        if not (lo_ok and hi_ok):
            self.fail(name, f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")


def _check(cfg: RunConfig, errors: list[str], check_files: bool) -> None:
    c = _Checker(errors)
    _check_run(cfg.run, c)
    _check_model(cfg.model, c)
    _check_tokenizer(cfg.tokenizer, c)
    _check_data(cfg.data, c)
    _check_rollout(cfg.rollout, c)
    _check_reward(cfg.reward, c)
    _check_algorithm(cfg.algorithm, c)
    _check_learner(cfg.learner, c)
    _check_ray(cfg.ray, c)
    _check_together(cfg, c)
    if check_files:
        _check_files(cfg, c)


def _check_run(r: RunSection, c: _Checker):
    if not r.name.strip() or "/" in r.name:
        c.fail("run.name", "must be a non-empty name without '/'")
    if not r.output_dir:
        c.fail("run.output_dir", "must not be empty")
    c.at_least("run.seed", r.seed, 0)
    c.at_least("run.steps", r.steps, 1)
    c.at_least("run.save_every", r.save_every, 0)
    c.at_least("run.max_restarts", r.max_restarts, 0)
    c.at_least("run.eval_every", r.eval_every, 0)


def _check_model(m: ModelSection, c: _Checker):
    c.one_of("model.dtype", m.dtype, DTYPES)
    if m.path is not None and m.init:
        c.fail("model.init", "is only used to build a fresh model; set model.path=null to use it, "
                             "or model.init={} to load model.path")


def _check_tokenizer(tokenizer: str, c: _Checker):
    if tokenizer.startswith("builtin:"):
        c.one_of("tokenizer", tokenizer, BUILTIN_TOKENIZERS)
    elif not tokenizer:
        c.fail("tokenizer", f"must be one of {list(BUILTIN_TOKENIZERS)} or a local folder")


def _check_data(d: DataSection, c: _Checker):
    if d.task is not None:
        c.one_of("data.task", d.task, TASKS)
    if d.task is not None and d.path is not None:
        c.fail("data.path", f"cannot be used together with data.task={d.task!r}; set data.task=null "
                            "to train on data.path, or data.path=null for the built-in task")
    if d.task is None and d.path is None:
        c.fail("data.task", f"is null and so is data.path; set one of them (tasks: {list(TASKS)})")
    if "prompt" not in d.columns:
        c.fail("data.columns", "must map 'prompt' to the prompt column of the dataset")
    c.at_least("data.difficulty", d.difficulty, 1)
    c.at_least("data.train_size", d.train_size, 1)
    for i, extra in enumerate(d.extra_train):
        if d.task is None:
            c.fail("data.extra_train", "needs a built-in data.task")
        c.at_least(f"data.extra_train[{i}].size", extra.size, 1)
        c.at_least(f"data.extra_train[{i}].difficulty", extra.difficulty, 1)
    c.at_least("data.eval_size", d.eval_size, 0)


def _check_rollout(r: RolloutSection, c: _Checker):
    c.one_of("rollout.engine", r.engine, ENGINES)
    c.at_least("rollout.num_workers", r.num_workers, 1)
    c.at_least("rollout.n", r.n, 1)
    c.at_least("rollout.prompts_per_step", r.prompts_per_step, 1)
    if r.temperature <= 0:
        c.fail("rollout.temperature", "must be > 0: the learner divides the logits by it to get the "
                                      "sampling distribution (greedy decoding is for evaluation only)")
    c.within("rollout.top_p", r.top_p, 0, 1, low_open=True)
    if r.top_k != -1 and r.top_k < 1:
        c.fail("rollout.top_k", "must be -1 (off) or >= 1")
    c.at_least("rollout.max_tokens", r.max_tokens, 1)
    c.at_least("rollout.max_batch_size", r.max_batch_size, 1)
    c.within("rollout.gpu_memory_utilization", r.gpu_memory_utilization, 0, 1, low_open=True)
    c.one_of("rollout.weight_sync", r.weight_sync, WEIGHT_SYNCS)
    c.above("rollout.weight_sync_bucket_mb", r.weight_sync_bucket_mb, 0)
    c.above("rollout.eval_temperature", r.eval_temperature, 0)
    c.at_least("rollout.eval_n", r.eval_n, 1)
    c.at_least("rollout.partial_tokens", r.partial_tokens, 1)
    c.at_least("rollout.gpus_per_worker", r.gpus_per_worker, 0)
    if r.max_model_len is not None and r.max_model_len <= r.max_tokens:
        c.fail("rollout.max_model_len", f"must be > rollout.max_tokens ({r.max_tokens}): it holds the prompt too")
    if r.vllm_kwargs and r.engine != "vllm":
        c.fail("rollout.vllm_kwargs", f"is for rollout.engine=vllm (this run's engine: {r.engine!r})")
    for key in r.vllm_kwargs:
        if key in VLLM_SET_BY_DELTARL:
            c.fail(f"rollout.vllm_kwargs.{key}", f"deltarl sets it ({VLLM_SET_BY_DELTARL[key]})")


def _check_reward(r: RewardSection, c: _Checker):
    if not r.functions:
        c.fail("reward.functions", "must list at least one reward function")
    seen = set()
    for i, f in enumerate(r.functions):
        where = f"reward.functions[{i}]"
        target, sep, fname = f.fn.rpartition(":")
        if not f.fn:
            c.fail(f"{where}.fn", "is required: a built-in name, 'module:function' or 'file.py:function'")
        elif not sep and f.fn not in BUILTIN_REWARDS:
            close = difflib.get_close_matches(f.fn, BUILTIN_REWARDS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            c.fail(f"{where}.fn", f"{f.fn!r} is not a built-in reward {list(BUILTIN_REWARDS)}{hint} "
                                  "(or name one as 'module:function' or 'path/to/file.py:function')")
        elif sep and not (target and fname):
            c.fail(f"{where}.fn", f"{f.fn!r}: expected 'module:function' or 'path/to/file.py:function'")
        if f.fn and (not f.name or "/" in f.name):
            c.fail(f"{where}.name", "must be a non-empty name without '/' (it names metrics)")
        elif f.name in seen:
            c.fail(f"{where}.name", f"{f.name!r} is used twice; give each reward its own name")
        seen.add(f.name)
        c.above(f"{where}.timeout", f.timeout, 0)
    c.at_least("reward.num_workers", r.num_workers, 0)
    c.at_least("reward.cpus_per_worker", r.cpus_per_worker, 0)
    c.at_least("reward.chunk_size", r.chunk_size, 1)


def _check_algorithm(a: AlgorithmSection, c: _Checker):
    c.one_of("algorithm.advantage", a.advantage, ADVANTAGES)
    c.within("algorithm.clip_low", a.clip_low, 0, 1, high_open=True)
    c.at_least("algorithm.clip_high", a.clip_high, 0)
    c.one_of("algorithm.loss_aggregation", a.loss_aggregation, LOSS_AGGREGATIONS)
    c.at_least("algorithm.kl_coef", a.kl_coef, 0)
    if a.kl_estimator is not None:
        c.one_of("algorithm.kl_estimator", a.kl_estimator, KL_ESTIMATORS)
    c.one_of("algorithm.kl_mode", a.kl_mode, KL_MODES)
    c.at_least("algorithm.entropy_coef", a.entropy_coef, 0)
    c.at_least("algorithm.overlong_buffer", a.overlong_buffer, 0)
    c.at_least("algorithm.overlong_penalty", a.overlong_penalty, 0)
    c.at_least("algorithm.tis_cap", a.tis_cap, 1)
    c.one_of("algorithm.is_correction", a.is_correction, IS_CORRECTIONS)
    c.one_of("algorithm.proximal", a.proximal, PROXIMALS)
    c.at_least("algorithm.max_staleness", a.max_staleness, 0)
    c.one_of("algorithm.stale_samples", a.stale_samples, STALE_SAMPLES)
    c.at_least("algorithm.ppo_epochs", a.ppo_epochs, 1)
    c.at_least("algorithm.mini_batches", a.mini_batches, 1)


def _check_learner(l: LearnerSection, c: _Checker):
    c.one_of("learner.backend", l.backend, BACKENDS)
    c.within("learner.zero_stage", l.zero_stage, 0, 3)
    c.above("learner.lr", l.lr, 0)
    c.at_least("learner.weight_decay", l.weight_decay, 0)
    if len(l.betas) != 2:
        c.fail("learner.betas", f"must be two numbers [beta1, beta2], got {len(l.betas)}")
    for i, beta in enumerate(l.betas):
        c.within(f"learner.betas[{i}]", beta, 0, 1, high_open=True)
    c.above("learner.grad_clip", l.grad_clip, 0)
    c.at_least("learner.warmup_steps", l.warmup_steps, 0)
    c.at_least("learner.micro_batch_tokens", l.micro_batch_tokens, 1)
    c.at_least("learner.threads", l.threads, 1)
    c.at_least("learner.num_workers", l.num_workers, 1)
    c.at_least("learner.gpus_per_worker", l.gpus_per_worker, 0)
    if l.num_workers > 1 and l.backend != "deepspeed":
        c.fail("learner.num_workers", f"{l.num_workers} needs learner.backend=deepspeed (it reduces the ranks' "
                                      f"gradients); learner.backend={l.backend!r} runs one rank: use num_workers=1")
    _check_offload(l, c)


def _check_offload(l: LearnerSection, c: _Checker):
    """learner.offload is DeepSpeed's ZeRO-Offload: a ZeRO stage >= 1 for the optimizer, ZeRO-3 for the
    parameters (only ZeRO-3 partitions them)."""
    c.one_of("learner.offload", l.offload, OFFLOADS)
    if l.offload == "none" or l.offload not in OFFLOADS:
        return
    if l.backend != "deepspeed":
        c.fail("learner.offload", f"{l.offload!r} needs learner.backend 'deepspeed' (got {l.backend!r}); "
                                  "use 'none' with the torch backend")
    elif l.zero_stage < 1:
        c.fail("learner.offload", f"{l.offload!r} needs learner.zero_stage >= 1 (got {l.zero_stage}): "
                                  "DeepSpeed offloads the optimizer state of a ZeRO optimizer")
    elif l.offload == "optimizer_and_params" and l.zero_stage != 3:
        c.fail("learner.offload", f"'optimizer_and_params' needs learner.zero_stage 3 (got {l.zero_stage}): "
                                  "only ZeRO-3 partitions the parameters; use 'optimizer'")


def _check_ray(r: RaySection, c: _Checker):
    c.at_least("ray.num_cpus", r.num_cpus, 1)
    c.at_least("ray.num_gpus", r.num_gpus, 0)
    c.one_of("ray.placement", r.placement, PLACEMENTS)
    c.one_of("ray.placement_strategy", r.placement_strategy, PLACEMENT_STRATEGIES)
    c.above("ray.placement_timeout_s", r.placement_timeout_s, 0)


def _check_together(cfg: RunConfig, c: _Checker):
    """Fields that are each fine alone but cannot run together."""
    r, a, d = cfg.rollout, cfg.algorithm, cfg.data
    if r.n < 2 and a.advantage != "reinforce_pp":
        c.fail("rollout.n", f"must be >= 2 for algorithm.advantage={a.advantage!r} (a group baseline "
                            "needs several samples per prompt); use reinforce_pp for n=1")
    if a.kl_mode == "reward" and a.advantage in OUTCOME_ADVANTAGES:
        c.fail("algorithm.kl_mode", f"'reward' needs a per-token return estimator (algorithm.advantage="
                                    f"reinforce_pp or reinforce_pp_baseline); algorithm.advantage={a.advantage!r} "
                                    "gives one number per sample and cannot carry a per-token KL. Use "
                                    "algorithm.kl_mode=loss with it")
    if a.overlong_buffer > r.max_tokens:
        c.fail("algorithm.overlong_buffer", f"must be <= rollout.max_tokens ({r.max_tokens})")
    learners = cfg.learner.num_workers
    if r.num_workers > learners >= 1 and cfg.ray.placement == "colocated":
        c.fail("rollout.num_workers", f"must be <= learner.num_workers ({learners}) with ray.placement=colocated "
                                      "(engine i shares learner rank i's bundle); use ray.placement=split for more "
                                      "engines than learner ranks")
    if (cfg.learner.gpus_per_worker or 0) > 1 and cfg.ray.placement == "colocated":
        c.fail("learner.gpus_per_worker", "must be 0, 1 or null with ray.placement=colocated (a rank shares one "
                                          "GPU with an engine); use ray.placement=split for ranks of several GPUs")
    if r.weight_sync == "ipc" and (r.engine != "vllm" or cfg.ray.placement != "colocated"):
        c.fail("rollout.weight_sync", "'ipc' needs rollout.engine=vllm and ray.placement=colocated (CUDA IPC "
                                      "maps the learner's GPU memory into a vLLM engine on the same GPU); "
                                      "allowed values: " + str(list(WEIGHT_SYNCS)))
    if a.mini_batches > r.prompts_per_step * r.n:
        c.fail("algorithm.mini_batches", f"must be <= the samples per step, rollout.prompts_per_step "
                                         f"* rollout.n ({r.prompts_per_step * r.n})")
    if cfg.learner.micro_batch_tokens < r.max_tokens:
        c.fail("learner.micro_batch_tokens", f"must be >= rollout.max_tokens ({r.max_tokens}) so that "
                                             "a response fits in one micro-batch")
    if d.task is not None and r.prompts_per_step > d.train_size:
        c.fail("rollout.prompts_per_step", f"must be <= data.train_size ({d.train_size})")
    if r.partial and r.partial_tokens is not None and r.partial_tokens >= r.max_tokens:
        c.fail("rollout.partial_tokens", f"must be < rollout.max_tokens ({r.max_tokens}) with rollout.partial=true "
                                         "(a sequence pauses after partial_tokens; null: max_tokens // 4)")
    if r.partial and r.max_tokens < 2:
        c.fail("rollout.partial", "needs rollout.max_tokens >= 2 (a sequence pauses midway)")
    if a.is_correction in ("mask_token", "mask_sequence") and a.tis_cap is None:
        c.fail("algorithm.tis_cap", f"must be set (the bound C) with algorithm.is_correction={a.is_correction!r}")
    if r.engine == "vllm" and _uses_moba(cfg.model):
        c.fail("rollout.engine", "vllm does not serve MoBA attention (the model's moba_config); a MoBA "
                                 "model's rollouts use rollout.engine=embedded")


def _uses_moba(m: ModelSection) -> bool:
    """Whether the model has MoBA layers: `moba_config` in model.init, or in model.path's config.json."""
    if m.path is None:
        return m.init.get("moba_config") is not None
    config = Path(m.path).expanduser() / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("moba_config") is not None


def _check_files(cfg: RunConfig, c: _Checker):
    """Local paths must exist: nothing is downloaded, and finding out after Ray and the model
    have started wastes minutes."""
    paths = [("model.path", cfg.model.path, "dir"), ("data.path", cfg.data.path, "any"),
             ("data.eval_path", cfg.data.eval_path, "any"),
             ("run.resume", None if cfg.run.resume == "auto" else cfg.run.resume, "dir")]
    if not cfg.tokenizer.startswith("builtin:"):
        paths.append(("tokenizer", cfg.tokenizer, "dir"))
    for i, f in enumerate(cfg.reward.functions):
        target = f.fn.rpartition(":")[0]
        if target.endswith(".py"):
            paths.append((f"reward.functions[{i}].fn", target, "file"))
    for name, path, kind in paths:
        if path is None:
            continue
        p = Path(path).expanduser()
        ok = p.is_dir() if kind == "dir" else p.is_file() if kind == "file" else p.exists()
        if not ok:
            what = {"dir": "folder", "file": "file", "any": "file or folder"}[kind]
            c.fail(name, f"{what} {str(path)!r} not found")
