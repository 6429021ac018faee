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

from deltarl.rl.algorithms import (aggregate, entropy_bonus, entropy_from_logits, kl_penalty, loss_denominator,
                                   masked_mean, policy_loss)
from deltarl.rollout.sampling import keep_mask

from . import checkpoint as ckpt
from .samples import RolloutBatch, micro_batches, pad_right


def response_logprobs(model, prompt_ids, response_ids, temperature, top_k=-1, top_p=1.0, with_entropy=False):
    """Pack (prompt + response) sequences into one row; return per-response-token logprobs [B, T]
    (and entropies) of the rollout engine's sampling distribution: logits / temperature, then the
    top-k / top-p filter with the engines' rules (`rollout.sampling.keep_mask`), renormalised. So the
    PPO ratio and the TIS weight compare the same distribution the engine reports (`processed_logprobs`).
    top_k=-1, top_p=1 give the plain log_softmax(logits / temperature) (the reference policy's KL).
    Padding (past each response) is 0."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (the logits are divided by it), got {temperature}")
    device = next(model.parameters()).device
    ids = torch.tensor([t for p, r in zip(prompt_ids, response_ids) for t in (*p, *r)], device=device)[None]
    p_len = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
    r_len = torch.tensor([len(r) for r in response_ids], dtype=torch.long)
    lengths = p_len + r_len
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    logits = model(ids, cu_seqlens=cu.to(device=device, dtype=torch.int32)).logits[0]      # [total, V]
    # response token j of sequence b sits at cu[b] + len(p_b) + j and is predicted one position earlier
    width = max(1, int(r_len.max()) if r_len.numel() else 0)
    j = torch.arange(width)
    valid = j[None, :] < r_len[:, None]                                                      # [B, T]
    token_pos = torch.where(valid, (cu[:-1] + p_len)[:, None] + j[None, :], 0)
    valid, token_pos = valid.to(device), token_pos.to(device)
    rows = logits[token_pos - 1 + (~valid).long()].float() / temperature                      # [B, T, V]
    if top_k > 0 or top_p < 1.0:
        rows = rows.masked_fill(~keep_mask(rows, top_k, top_p), float("-inf"))
    targets = torch.where(valid, ids[0][token_pos], 0)
    logp = rows.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    logp = torch.where(valid, logp, 0.0)
    entropy = torch.where(valid, entropy_from_logits(rows), 0.0) if with_entropy else None
    return logp, entropy


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
        self.model = AutoModelForCausalLM.from_pretrained(model_path).to(device).train()
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.reference = None
        if cfg_algorithm.kl_coef > 0:
            self.reference = AutoModelForCausalLM.from_pretrained(model_path).to(device).eval().requires_grad_(False)
        self.total_steps = total_steps
        self.backend = self._make_optimizer()

    # --- optimizer ------------------------------------------------------------------------------
    def _lr_lambda(self, step):
        warmup = self.cfg.warmup_steps
        return min(1.0, (step + 1) / warmup) if warmup else 1.0

    def _make_optimizer(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, betas=tuple(self.cfg.betas),
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
        The rollout engine's logprobs feed truncated importance sampling."""
        self.model.train()
        algo = self.algo
        if algo.ppo_epochs * algo.mini_batches > 1:
            batch.old_logprobs = self._logprobs(self.model, batch)
        order = torch.Generator().manual_seed(self.scheduler.last_epoch)   # mini-batch shuffle, resumable
        totals, updates = {}, 0
        for _ in range(algo.ppo_epochs):
            perm = torch.randperm(batch.size, generator=order) if algo.mini_batches > 1 else torch.arange(batch.size)
            for part in perm.tensor_split(algo.mini_batches):
                for k, v in self._update(batch.subset(sorted(part.tolist()))).items():
                    totals[k] = totals.get(k, 0.0) + v
                updates += 1
        metrics = {k: v / updates for k, v in totals.items()}
        metrics.update({"actor/lr": self.scheduler.get_last_lr()[0], "actor/updates": float(updates)})
        return metrics

    @torch.no_grad()
    def _logprobs(self, model, batch: RolloutBatch) -> torch.Tensor:
        """`model`'s logprobs of every response token, [B, T] like batch.mask, on the CPU, computed in the
        same token-budget micro-batches as the update."""
        out = torch.zeros_like(batch.mask, dtype=torch.float32)
        for index in micro_batches(batch, self.cfg.micro_batch_tokens):
            micro = batch.subset(index)
            filters = (-1, 1.0) if model is self.reference else (self.top_k, self.top_p)
            logp, _ = response_logprobs(model, micro.prompt_ids, micro.response_ids, self.temperature, *filters)
            out[torch.tensor(index)[:, None], torch.arange(logp.shape[1])[None, :]] = logp.float().cpu()
        return out

    def _update(self, batch: RolloutBatch) -> dict:
        """Gradients of the loss over `batch` (in token-budget micro-batches), then one optimizer step.

        The loss is normalised over the whole of `batch` (loss_denominator of its mask), and every
        micro-batch contributes its sums over that denominator: the accumulated gradient is the
        batch's, however it is split into micro-batches."""
        index_groups = micro_batches(batch, self.cfg.micro_batch_tokens)
        denominator = loss_denominator(batch.mask, self.algo.loss_aggregation, self.max_tokens)
        tokens = float(batch.mask.sum().clamp(min=1))
        metrics = {}
        for i, index in enumerate(index_groups):
            micro = batch.subset(index)
            loss, stats = self._micro_loss(micro, denominator)
            self._backward(loss, boundary=i == len(index_groups) - 1)
            _merge_stats(metrics, stats, share=float(micro.mask.sum()) / tokens)
        metrics = {f"actor/{k}": v for k, v in metrics.items()}
        metrics.update({"actor/grad_norm": self._step(), "actor/micro_batches": float(len(index_groups))})
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
        loss, stats = policy_loss(logp, old, adv, mask, clip_low=algo.clip_low, clip_high=algo.clip_high,
                                  aggregation=agg, rollout_logprobs=rollout_lp, tis_cap=algo.tis_cap,
                                  denominator=denominator)
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
        """The current (= old, before this step's update) policy's logprobs [B, T], for KL as a reward."""
        return self._logprobs(self.model, batch)

    def reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor | None:
        """Reference-policy logprobs [B, T] (for KL as a reward penalty), or None when KL is off."""
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

    def named_weights(self) -> dict:
        """The policy's full tensors under checkpoint names, on the CPU, for the rollout engines.

        Each tensor gets its own storage: DeepSpeed's ZeRO optimizer makes the parameters views into
        one flat buffer, and pickling a view (Ray's object store) writes the whole buffer, once per tensor."""
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
        plus one parameter is the most held in full. Returns {"bytes", "buckets", "seconds"}."""
        from deltarl.rollout.weight_transfer import WeightSender, tensor_spec
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
        schedule; and the learner process's RNG states."""
        folder = Path(folder)
        self.model.save_pretrained(folder / "policy", state_dict=self.named_weights())
        state = {"rng": ckpt.rng_state()}
        if self.engine is None:
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict())
        else:
            self.engine.save_checkpoint(str(folder / "deepspeed"), tag=_DS_TAG, save_latest=False)
        torch.save(state, folder / "learner_state.pt")

    def load(self, folder: str):
        """Restore what `save` wrote, strictly: a missing or unexpected tensor is an error. The reference
        policy is left alone (it is the run's initial policy)."""
        folder = Path(folder)
        state = torch.load(folder / "learner_state.pt", weights_only=False)
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
_MAX_STATS = ("ratio_max",)


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


def _deepspeed_engine(model, optimizer, scheduler, cfg):
    """A DeepSpeed engine around the model and our optimizer (on the CPU DeepSpeed uses its CPU
    accelerator and gloo), or None where DeepSpeed is not installed: the torch path then takes the
    same steps."""
    try:
        import deepspeed
    except ImportError:
        return None
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    # gradient_accumulation_steps 1: the learner marks each step's last micro-batch itself
    # (set_gradient_accumulation_boundary), since the number of micro-batches varies per step
    ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                 "gradient_clipping": cfg.grad_clip or 0.0, "zero_optimization": {"stage": cfg.zero_stage},
                 "bf16": {"enabled": bool(cfg.bf16)}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine
