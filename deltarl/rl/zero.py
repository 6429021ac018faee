"""The learner's DeepSpeed config, and ZeRO-3 models that are never whole on one device.

`deepspeed_config` is the one place the config is built: the policy's engine, `zero.Init` and the
KL reference's engine all read it. Under ZeRO-3 the policy and the reference are constructed inside
`deepspeed.zero.Init` (each parameter is cut into per-rank partitions as its module is made) and the
checkpoint is streamed in one tensor at a time: the parameter is gathered, rank 0 copies the file's
tensor into it, and leaving `GatheredParameters` hands every rank its partition again. So the most
held in full at once is one parameter (plus the file being read, memory-mapped, on rank 0's host).

transformers' own route (`HfDeepSpeedConfig` before `from_pretrained`) needs the `accelerate` package,
which is not a dependency here, and reads the whole state dict into host memory on rank 0.
"""
import contextlib
from pathlib import Path

import torch


def deepspeed_config(cfg) -> dict:
    """The DeepSpeed config for a `LearnerSection`. gradient_accumulation_steps is 1: the learner
    marks each step's last micro-batch itself (set_gradient_accumulation_boundary), as the number of
    micro-batches varies per step. `cfg.offload` moves the optimizer state and step (and, ZeRO-3 only,
    the parameters' partitions) to host memory, pinned where there is a GPU."""
    zero = {"stage": cfg.zero_stage}
    offload = getattr(cfg, "offload", "none")
    pinned = torch.cuda.is_available()
    if offload in ("optimizer", "optimizer_and_params"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pinned}
    if offload == "optimizer_and_params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": pinned}
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
            "gradient_clipping": cfg.grad_clip or 0.0, "zero_optimization": zero,
            "bf16": {"enabled": bool(cfg.bf16)}}


def reference_config(ds_config: dict) -> dict:
    """`ds_config` for a frozen model's engine: the same ZeRO stage, dtype and parameter offload, no
    optimizer (so no optimizer offload and no clipping)."""
    zero = {k: v for k, v in ds_config["zero_optimization"].items() if k != "offload_optimizer"}
    return {**ds_config, "zero_optimization": zero, "gradient_clipping": 0.0}


def uses_zero3(cfg) -> bool:
    """True when the learner will run DeepSpeed ZeRO-3 (DeepSpeed installed, backend and stage asking)."""
    if cfg.backend != "deepspeed" or cfg.zero_stage != 3:
        return False
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return False
    return True


def load_partitioned(model_path: str, ds_config: dict):
    """A transformers causal LM from `model_path`, built under zero.Init with `ds_config` and loaded
    partition by partition (see the module docstring). Strict: a checkpoint tensor the model lacks, a
    model tensor the checkpoint lacks (tied weights aside) or a shape mismatch is an error."""
    import deepspeed
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    config = AutoConfig.from_pretrained(model_path)
    with deepspeed.zero.Init(config_dict_or_path=ds_config), no_init_weights():
        model = AutoModelForCausalLM.from_config(config)
    _stream_checkpoint(model, Path(model_path))
    return model


def _stream_checkpoint(model, folder: Path):
    """Copy every tensor of the checkpoint folder's safetensors files into `model`, one at a time."""
    from safetensors import safe_open
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no model*.safetensors in {folder}")
    targets = model.state_dict(keep_vars=True)           # name -> parameter (partitioned) or buffer
    loaded, problems = set(), []
    for file in files:
        with safe_open(str(file), framework="pt") as reader:
            for name in reader.keys():                    # same order on every rank: gathers are collectives
                if name not in targets:
                    problems.append(f"unexpected tensor {name} in {file.name}")
                    continue
                problems.extend(_copy_into(targets[name], name, reader))
                loaded.add(id(targets[name]))
    problems += [f"missing tensor {name}" for name, t in targets.items() if id(t) not in loaded]
    if problems:
        raise ValueError(f"checkpoint {folder} does not match the model: " + "; ".join(problems))


def _copy_into(target, name, reader) -> list[str]:
    """Load one checkpoint tensor into `target`: a ZeRO-3 parameter is gathered and rank 0 writes it
    (leaving the context repartitions it from rank 0's copy); a buffer is written on every rank.
    Returns the problems found (a shape mismatch)."""
    import torch.distributed as dist
    shape = tuple(getattr(target, "ds_shape", target.shape))
    found = tuple(reader.get_slice(name).get_shape())
    if found != shape:
        return [f"{name}: checkpoint shape {found}, model {shape}"]
    partitioned = hasattr(target, "ds_id")
    writes = not partitioned or dist.get_rank() == 0
    with _writable(target) if partitioned else contextlib.nullcontext():
        if writes:
            with torch.no_grad():
                target.data.copy_(reader.get_tensor(name))
    return []


def _writable(param):
    """The full parameter on every rank; rank 0's values become everyone's partitions on exit."""
    import deepspeed
    return deepspeed.zero.GatheredParameters([param], modifier_rank=0)


def reference_engine(model, ds_config: dict):
    """A DeepSpeed engine without an optimizer around the frozen `model` (already built under zero.Init):
    its ZeRO-3 hooks gather each layer's parameters for the forward and release them after, so the
    reference stays partitioned like the policy. The module is returned frozen and in eval mode; keep
    the engine alive as long as the module is used (the hooks belong to it)."""
    import deepspeed
    model.eval().requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=reference_config(ds_config))
    engine.eval()
    return engine
