"""The learner: the policy being trained, its optimizer and the policy-gradient step.

Sequences are packed into one row per micro-batch (`cu_seqlens`), so the chunkwise KDA kernels and the
MLA layers see no padding. The optimizer is a DeepSpeed engine (ZeRO stage from the config) where
DeepSpeed runs, or torch's AdamW with the same step otherwise: `backend` says which.
"""
import contextlib
import math
import os
from pathlib import Path

import torch

from deltarl.rl.algorithms import (aggregate, entropy_bonus, kl_penalty, loss_denominator,
                                   masked_mean, policy_loss)

from . import checkpoint as ckpt
from .logprobs import response_logprobs
from .samples import RolloutBatch, micro_batches, pad_right
from .zero import deepspeed_config, load_partitioned, reference_engine, uses_zero3


class Learner:
    """Holds the policy (and a frozen reference when KL is on); `train_step` is one policy update.

    `model_path` is the run's initial policy, and the KL reference is always that model: a resumed
    run starts here too and then `load`s its checkpoint over the policy (not over the reference).
    `max_tokens` is the rollout's response budget (`rollout.max_tokens`), Dr.GRPO's fixed constant."""

    def __init__(self, model_path: str, cfg_learner, cfg_algorithm, temperature: float, total_steps: int,
                 gradient_checkpointing: bool = False, top_k: int = -1, top_p: float = 1.0,
                 max_tokens: int | None = None):
        from transformers import AutoModelForCausalLM

        import deltarl.model as _register_kimi_linear  # noqa: F401
        if cfg_learner.threads:
            torch.set_num_threads(cfg_learner.threads)
        self.cfg, self.algo, self.temperature = cfg_learner, cfg_algorithm, temperature
        if cfg_algorithm.loss_aggregation == "seq-mean-token-sum-norm" and not max_tokens:
            raise ValueError("loss_aggregation 'seq-mean-token-sum-norm' (Dr.GRPO) needs the learner's "
                             "max_tokens (rollout.max_tokens), its fixed normaliser")
        self.max_tokens = max_tokens
        self._exported = None      # ZeRO-3: gathered copies whose CUDA IPC handles an engine may hold
        self.top_k, self.top_p = top_k, top_p     # the rollout's filter: logprobs of the sampled distribution
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.ds_config = deepspeed_config(cfg_learner)      # the engine's, zero.Init's and the reference's
        # ZeRO-3: built under zero.Init and loaded a parameter at a time, never whole on one device
        zero3 = uses_zero3(cfg_learner)
        if zero3:
            init_distributed()          # zero.Init partitions over the learner group
        load = (lambda: load_partitioned(model_path, self.ds_config)) if zero3 else \
            (lambda: AutoModelForCausalLM.from_pretrained(model_path).to(device))
        self.model = load().train()
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.reference, self.reference_engine = None, None
        if cfg_algorithm.kl_coef > 0:
            self.reference = load().eval().requires_grad_(False)
            if zero3:     # stays partitioned: an optimizer-less engine's hooks gather it layer by layer
                self.reference_engine = reference_engine(self.reference, self.ds_config)
        self.total_steps = total_steps
        self.backend = self._make_optimizer()

    # --- optimizer ------------------------------------------------------------------------------
    def _lr_lambda(self, step):
        warmup = self.cfg.warmup_steps
        return min(1.0, (step + 1) / warmup) if warmup else 1.0

    def _make_optimizer(self):
        """AdamW (DeepSpeed's CPU Adam, the same update, when the optimizer is offloaded to the host:
        DeepSpeed refuses other optimizers there), its LR schedule, and the DeepSpeed engine if any."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        adamw = torch.optim.AdamW
        if self.cfg.backend == "deepspeed" and self.cfg.offload != "none":
            from deepspeed.ops.adam import DeepSpeedCPUAdam as adamw
        self.optimizer = adamw(params, lr=self.cfg.lr, betas=tuple(self.cfg.betas),
                               weight_decay=self.cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        self.engine = None
        if self.cfg.backend == "deepspeed":
            self.engine = _deepspeed_engine(self.model, self.optimizer, self.scheduler, self.cfg)
        return "deepspeed" if self.engine is not None else "torch"

    # --- the step ---------------------------------------------------------------------------------
    def train_step(self, batch: RolloutBatch) -> dict:
        """One RL step: `algorithm.ppo_epochs` passes over the batch, each split into
        `algorithm.mini_batches` optimizer steps. With a single update the old logprobs are the current
        policy's (the ratio starts at 1); with more, they are computed once before the first update.
        The rollout engine's logprobs feed the off-policy correction (algorithm.is_correction).

        In a learner group (data-parallel ranks) every rank gets the whole batch and trains on the
        samples `assign_ranks` gives it for the whole step; the mini-batch order is the same on every
        rank. The metrics are then this rank's parts, which `learner_group.combine_metrics` adds up;
        maxima are the largest over the step's updates."""
        self.model.train()
        algo = self.algo
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        owner = assign_ranks(batch, self._rank_world()[1])                     # [B] each sample's rank
        if algo.ppo_epochs * algo.mini_batches > 1:
            batch.old_logprobs = self._logprobs(self.model, batch, owner)      # this rank's rows, 0 elsewhere
        order = torch.Generator().manual_seed(self.scheduler.last_epoch)   # mini-batch shuffle, resumable
        totals, updates = {}, 0
        for _ in range(algo.ppo_epochs):
            perm = torch.randperm(batch.size, generator=order) if algo.mini_batches > 1 else torch.arange(batch.size)
            for part in perm.tensor_split(algo.mini_batches):
                index = sorted(part.tolist())
                for k, v in self._update(batch.subset(index), [owner[i] for i in index]).items():
                    totals[k] = max(totals.get(k, v), v) if k in MAX_METRICS else totals.get(k, 0.0) + v
                updates += 1
        metrics = {k: v if k in MAX_METRICS else v / updates for k, v in totals.items()}
        metrics.update({"actor/lr": self.scheduler.get_last_lr()[0], "actor/updates": float(updates)})
        if torch.cuda.is_available():           # this rank's GPU memory high-water mark in the step
            metrics["perf/learner_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return metrics

    def _rank_world(self) -> tuple[int, int]:
        """(this learner's data-parallel rank, the number of ranks): (0, 1) outside a learner group."""
        import torch.distributed as dist
        if self.engine is None or not dist.is_initialized():
            return 0, 1
        return dist.get_rank(), dist.get_world_size()

    @torch.no_grad()
    def _logprobs(self, model, batch: RolloutBatch, owner: list[int] | None = None) -> torch.Tensor:
        """`model`'s logprobs of this rank's response tokens, [B, T] like batch.mask, on the CPU (0 in
        the rows of other ranks' samples: a group adds the ranks' results), computed in the same
        token-budget micro-batches as the update. Every rank runs as many forwards as the busiest one
        (ZeRO-3 gathers parameters in each forward, a collective). `owner`: assign_ranks of `batch`."""
        rank, world = self._rank_world()
        owner = assign_ranks(batch, world) if owner is None else owner
        out = torch.zeros_like(batch.mask, dtype=torch.float32)
        filters = (-1, 1.0) if model is self.reference else (self.top_k, self.top_p)
        for index in rank_micro_batches(batch, owner, world, self.cfg.micro_batch_tokens)[rank]:
            micro = batch.subset(index) if index is not None else padding_micro_batch(batch)
            logp, _ = response_logprobs(model, micro.prompt_ids, micro.response_ids, self.temperature, *filters)
            if index is not None:
                out[torch.tensor(index)[:, None], torch.arange(logp.shape[1])[None, :]] = logp.float().cpu()
        return out

    def _update(self, batch: RolloutBatch, owner: list[int]) -> dict:
        """Gradients of the loss over `batch` (in token-budget micro-batches), then one optimizer step.

        The loss is normalised over the whole of `batch` (loss_denominator of its mask), and every
        micro-batch contributes its sums over that denominator: the accumulated gradient is the
        batch's, however it is split into micro-batches. In a group of W ranks each rank runs its own
        samples (`owner` [b]) and as many micro-batches as the busiest rank (padding ones weigh 0), so
        every rank reduces gradients equally often; DeepSpeed averages the ranks' gradients, so each
        loss is multiplied by W and the average is the whole batch's gradient."""
        rank, world = self._rank_world()
        plan = rank_micro_batches(batch, owner, world, self.cfg.micro_batch_tokens)[rank]
        denominator = loss_denominator(batch.mask, self.algo.loss_aggregation, self.max_tokens)  # all ranks'
        tokens = float(batch.mask.sum().clamp(min=1))
        metrics = {}
        for i, index in enumerate(plan):
            micro = batch.subset(index) if index is not None else padding_micro_batch(batch)
            loss, stats = self._micro_loss(micro, denominator)
            self._backward(loss * world, boundary=i == len(plan) - 1)
            if index is not None:
                _merge_stats(metrics, stats, share=float(micro.mask.sum()) / tokens)
        metrics = {f"actor/{k}": v for k, v in metrics.items()}
        metrics.update({"actor/grad_norm": self._step(), "actor/micro_batches": float(len(plan))})
        return metrics

    def _micro_loss(self, micro: RolloutBatch, denominator: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """One micro-batch's part of the step's loss: policy loss - entropy bonus + KL loss, each its
        sum over this micro-batch divided by the step's `denominator`, so the parts add up to the loss
        of the whole step. Stats: loss terms are parts too; the rest are token means of this part."""
        algo, agg = self.algo, self.algo.loss_aggregation
        # through the DeepSpeed engine's forward, which counts the micro-steps (ZeRO-3 accumulates by them)
        policy = self.model if self.engine is None else self.engine
        logp, entropy = response_logprobs(policy, micro.prompt_ids, micro.response_ids, self.temperature,
                                          self.top_k, self.top_p, with_entropy=True)           # [b, T]
        T, device = logp.shape[1], logp.device
        mask, adv = micro.mask[:, :T].to(device), micro.advantages[:, :T].to(device)
        rollout_lp = micro.rollout_logprobs[:, :T].to(device)
        old = logp.detach() if micro.old_logprobs is None else micro.old_logprobs[:, :T].to(device)
        tis_cap = algo.tis_cap
        if algo.proximal == "rollout":     # coupled PPO: clip around the behaviour policy, no separate IS weight
            old, tis_cap = rollout_lp, None
        loss, stats = policy_loss(logp, old, adv, mask, clip_low=algo.clip_low, clip_high=algo.clip_high,
                                  aggregation=agg, rollout_logprobs=rollout_lp, tis_cap=tis_cap,
                                  denominator=denominator, is_correction=algo.is_correction)
        stats["entropy"] = masked_mean(entropy.detach(), mask)
        if algo.entropy_coef:
            loss = loss - algo.entropy_coef * entropy_bonus(entropy, mask, agg, denominator=denominator)
        if self.reference is not None and algo.kl_mode == "loss":
            with torch.no_grad():
                ref, _ = response_logprobs(self.reference, micro.prompt_ids, micro.response_ids, self.temperature)
            estimator = algo.kl_estimator or "k3"     # null: k3, the loss default (config.md)
            kl = aggregate(kl_penalty(logp, ref, estimator, mask), mask, agg, denominator=denominator)
            loss = loss + algo.kl_coef * kl
            stats["kl"] = kl.detach()
        return loss, stats

    def _backward(self, loss, boundary: bool):
        """Accumulate `loss`'s gradient; `boundary` marks the optimizer step's last micro-batch.

        DeepSpeed is told the boundary explicitly, so it reduces and steps only there (its config's
        gradient_accumulation_steps stays 1, as the number of micro-batches varies from step to step),
        and it must not divide by that count: the loss already is this micro-batch's part."""
        if self.engine is None:
            loss.backward()
            return
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss, scale_wrt_gas=False)

    def _step(self) -> float:
        """One optimizer step on the accumulated gradient; returns its norm (before clipping)."""
        if self.engine is not None:
            # a plain optimizer under DeepSpeed (stage 0, fp32) reports no norm: measure it first
            plain = self.cfg.zero_stage == 0 and not self.cfg.bf16
            own = _grad_norm(self.model) if plain else None
            self.engine.step()
            norm = self.engine.get_global_grad_norm()
            return float(norm if norm is not None else own if own is not None else math.nan)
        clip = self.cfg.grad_clip if self.cfg.grad_clip else math.inf
        norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def policy_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """The current (= old, before this step's update) policy's logprobs [B, T], for KL as a reward
        (in a group: this rank's rows, 0 elsewhere)."""
        return self._logprobs(self.model, batch)

    def reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor | None:
        """Reference-policy logprobs [B, T] (for KL as a reward penalty; in a group this rank's rows, 0
        elsewhere), or None when KL is off."""
        return None if self.reference is None else self._logprobs(self.reference, batch)

    # --- weights and checkpoints ------------------------------------------------------------------
    def _full_tensors(self, cpu: bool):
        """(name, full tensor with its own storage) for each tensor of the policy's state dict, under
        checkpoint names (what transformers and vLLM load). ZeRO-3 keeps only this rank's slice of a
        parameter: each is gathered in turn, so one parameter at a time is held in full."""
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            with _gathered(tensor):
                full = tensor.detach()
                yield name, full.to("cpu", copy=True) if cpu else full.clone()

    def _join_gathers(self):
        """A rank other than 0 under ZeRO-3: take part in each parameter's gather that rank 0's export
        runs (a collective), in the same order, keeping nothing."""
        for tensor in self.model.state_dict(keep_vars=True).values():
            with _gathered(tensor):
                pass

    def named_weights(self) -> dict | None:
        """The policy's full tensors under checkpoint names, on the CPU, for the rollout engines; None on
        a group's other ranks (under ZeRO-3 they take part in the gathers).

        Each tensor gets its own storage: DeepSpeed's ZeRO optimizer makes the parameters views into
        one flat buffer, and pickling a view (Ray's object store) writes the whole buffer, once per tensor."""
        if self._rank_world()[0] != 0:
            if self._zero3():
                self._join_gathers()
            return None
        return dict(self._full_tensors(cpu=True))

    def weight_ipc_handles(self) -> bytes:
        """CUDA IPC handles of the policy's tensors, pickled, for a rollout engine on the same GPU: it maps
        the learner's memory and copies from it. The handles point at the live parameters (under ZeRO-3
        at gathered copies kept until the next call), so they stay valid while the learner does not step
        (the trainer syncs between steps)."""
        import pickle

        from torch.multiprocessing.reductions import reduce_tensor
        if self._zero3():
            self._exported = dict(self._full_tensors(cpu=False))
            tensors = self._exported
        else:
            tensors = self.model.state_dict()
        return pickle.dumps({k: reduce_tensor(v.detach()) for k, v in tensors.items()})

    def broadcast_weights(self, address, bucket_mb: float) -> dict:
        """Rank 0's side of a bucketed broadcast sync (`rollout.weight_sync: broadcast`; the wire format
        is `deltarl.rollout.weight_transfer`'s): join the weight group at `address` on the first call,
        then send the policy's tensors under checkpoint names, bucket by bucket, while every engine
        receives. Under ZeRO-3 `_full_tensors` gathers one parameter at a time, so a bucket per dtype
        plus one parameter is the most held in full. Returns {"bytes", "buckets", "seconds"}; a group's
        other ranks send nothing and return None (under ZeRO-3 they take part in the gathers)."""
        from deltarl.rollout.weight_transfer import WeightSender, tensor_spec
        if self._rank_world()[0] != 0:
            if self._zero3():
                self._join_gathers()
            return None
        if getattr(self, "_weight_sender", None) is None:
            self._weight_sender = WeightSender()
        specs = [tensor_spec(k, v) for k, v in self.model.state_dict(keep_vars=True).items()]
        return self._weight_sender.send(address, specs, self._full_tensors(cpu=False), bucket_mb)

    def _zero3(self) -> bool:
        return self.engine is not None and self.cfg.zero_stage == 3

    def save(self, folder: str):
        """The policy as a transformers checkpoint (`policy/`, vLLM loads it; full tensors also under
        ZeRO-3) plus everything a resume needs: with DeepSpeed its own checkpoint (`deepspeed/`: module,
        optimizer state with the fp32 master weights, LR schedule), with torch the optimizer and the
        schedule; and the learner process's RNG states.

        In a group every rank calls it: DeepSpeed writes each rank's optimizer partition, rank 0 the
        transformers checkpoint, and each rank its RNG states (`learner_state[_rank<r>].pt`, with the
        number of ranks, which `load` checks)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        rank, world = self._rank_world()
        weights = self.named_weights()                     # under ZeRO-3 every rank joins the gathers
        if rank == 0:
            self.model.save_pretrained(folder / "policy", state_dict=weights)
        state = {"rng": ckpt.rng_state(), "world_size": world}
        if self.engine is None:
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict())
        else:
            self.engine.save_checkpoint(str(folder / "deepspeed"), tag=_DS_TAG, save_latest=False)
        torch.save(state, folder / _state_file(rank))

    def load(self, folder: str):
        """Restore what `save` wrote, strictly: a missing or unexpected tensor is an error. The reference
        policy is left alone (it is the run's initial policy). A checkpoint written by another number
        of ranks is refused (every rank reads rank 0's file, so all refuse before any collective)."""
        folder = Path(folder)
        rank, world = self._rank_world()
        state = torch.load(folder / _state_file(0), weights_only=False)
        saved = state.get("world_size", 1)
        if saved != world:
            raise ValueError(f"checkpoint {folder} was written by {saved} learner rank(s) (learner.num_workers="
                             f"{saved}) and this run has {world} (learner.num_workers={world}): DeepSpeed's "
                             f"optimizer state is partitioned per rank. Resume with learner.num_workers={saved}")
        if rank != 0:
            state = torch.load(folder / _state_file(rank), weights_only=False)
        if self.engine is None:
            self.model.load_state_dict(_read_safetensors(folder / "policy"), strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            path, _ = self.engine.load_checkpoint(str(folder / "deepspeed"), tag=_DS_TAG, load_module_strict=True,
                                                  load_optimizer_states=True, load_lr_scheduler_states=True)
            if path is None:
                raise FileNotFoundError(f"no DeepSpeed checkpoint {_DS_TAG!r} under {folder / 'deepspeed'}")
        ckpt.set_rng_state(state["rng"])


_DS_TAG = "learner"
_SUMMED_STATS = ("pg_loss", "kl")       # parts of the step's loss: the step's value is their sum
_MAX_STATS = ("ratio_max", "rollout_probs_diff_max")
MAX_METRICS = (*(f"actor/{k}" for k in _MAX_STATS),      # a step's (and a group's) value is the largest
               "perf/learner_peak_gib")
SAME_METRICS = ("actor/grad_norm", "actor/lr", "actor/updates", "actor/micro_batches")  # equal on all ranks


def _state_file(rank: int) -> str:
    return "learner_state.pt" if rank == 0 else f"learner_state_rank{rank}.pt"


def assign_ranks(batch: RolloutBatch, world: int) -> list[int]:
    """The data-parallel rank that computes each sample for a whole step, [B]: longest first (prompt +
    response tokens), each to the rank with the fewest tokens so far (the lowest rank on ties).
    Deterministic, so every rank, given the whole batch, computes the same assignment."""
    sizes = [len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids)]
    load, owner = [0] * world, [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        owner[i] = min(range(world), key=lambda r: (load[r], r))
        load[owner[i]] += sizes[i]
    return owner


def rank_micro_batches(batch: RolloutBatch, owner: list[int], world: int, budget: int) -> list[list]:
    """Each rank's micro-batches of `batch` (lists of sample indices into it), its samples packed in
    `budget`-token micro-batches, then padded with None to the same count on every rank (at least
    one): a padding micro-batch still runs forward and backward, with zero weight, so every rank
    reduces gradients (and ZeRO-3 gathers parameters) the same number of times."""
    plans = []
    for r in range(world):
        mine = [i for i in range(batch.size) if owner[i] == r]
        plans.append([[mine[j] for j in group] for group in micro_batches(batch.subset(mine), budget)] if mine
                     else [])
    count = max(1, *(len(p) for p in plans))
    return [p + [None] * (count - len(p)) for p in plans]


def padding_micro_batch(batch: RolloutBatch) -> RolloutBatch:
    """A micro-batch that weighs nothing: `batch`'s shortest sample with its mask and advantages zeroed
    (its loss is 0 and so is its gradient, but the forward and backward run)."""
    shortest = min(range(batch.size), key=lambda i: (len(batch.prompt_ids[i]) + len(batch.response_ids[i]), i))
    micro = batch.subset([shortest])
    micro.mask = torch.zeros_like(micro.mask)
    if micro.advantages is not None:
        micro.advantages = torch.zeros_like(micro.advantages)
    return micro


def _merge_stats(into: dict, stats: dict, share: float):
    """Fold one micro-batch's stats into the step's: loss parts add up, maxima take the max, token
    means are weighted by the micro-batch's share of the step's tokens."""
    for k, v in stats.items():
        v = float(v)
        if k in _SUMMED_STATS:
            into[k] = into.get(k, 0.0) + v
        elif k in _MAX_STATS:
            into[k] = max(into.get(k, v), v)
        else:
            into[k] = into.get(k, 0.0) + v * share


def _grad_norm(model) -> float:
    """L2 norm of all parameter gradients."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def _gathered(tensor):
    """A context in which a ZeRO-3-partitioned parameter holds its full data (read only); a no-op for
    any other tensor."""
    if not hasattr(tensor, "ds_id"):
        return contextlib.nullcontext()
    import deepspeed
    return deepspeed.zero.GatheredParameters([tensor], modifier_rank=None)


def _read_safetensors(folder: Path) -> dict:
    """All tensors of a transformers checkpoint folder (one file or shards)."""
    from safetensors.torch import load_file
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no model*.safetensors in {folder}")
    return {k: v for f in files for k, v in load_file(f).items()}


def init_distributed():
    """Join the learners' process group, once per process: NCCL where CUDA is, gloo on the CPU (decided by
    torch.cuda.is_available(), not by what Ray assigned: a fake GPU on a CPU machine stays on gloo).

    The rendezvous comes from RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, which a
    learner group sets on each rank; alone (no group), this process is rank 0 of 1 on a free local port,
    so two jobs on one node do not collide."""
    import deepspeed
    import torch.distributed as dist
    if dist.is_initialized():
        # joined earlier in this process; DeepSpeed's engine still reads the rank variables
        for name, value in (("RANK", dist.get_rank()), ("LOCAL_RANK", 0), ("WORLD_SIZE", dist.get_world_size())):
            os.environ.setdefault(name, str(value))
        return
    if "MASTER_PORT" not in os.environ:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port("127.0.0.1")))
    for name, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(name, value)
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                               auto_mpi_discovery=False, verbose=False)


def free_port(host: str = "") -> int:
    """A TCP port nobody listens on at `host` now (the OS picks it)."""
    import socket
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _deepspeed_engine(model, optimizer, scheduler, cfg):
    """A DeepSpeed engine around the model and our optimizer (on the CPU DeepSpeed uses its CPU
    accelerator and gloo), or None where DeepSpeed is not installed: the torch path then takes the
    same steps."""
    try:
        import deepspeed
    except ImportError:
        return None
    init_distributed()
    ds_config = deepspeed_config(cfg)     # the same config zero.Init built a ZeRO-3 model with
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine
