"""The learner: the policy being trained, its optimizer and the policy-gradient step.

Sequences are packed into one row per micro-batch (`cu_seqlens`), so the chunkwise KDA kernels and the
MLA layers see no padding. The optimizer is a DeepSpeed engine (ZeRO stage from the config) where
DeepSpeed runs, or torch's AdamW with the same step otherwise: `backend` says which.
"""
import math
import os
from pathlib import Path

import torch

from deltarl.rl.algorithms import aggregation_units, entropy_from_logits, kl_loss, masked_mean, policy_loss
from deltarl.rollout.sampling import keep_mask

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
    """Holds the policy (and a frozen reference when KL is on); `train_step` is one policy update."""

    def __init__(self, model_path: str, cfg_learner, cfg_algorithm, temperature: float, total_steps: int,
                 gradient_checkpointing: bool = False, top_k: int = -1, top_p: float = 1.0):
        from transformers import AutoModelForCausalLM

        import deltarl.model as _register_kimi_linear  # noqa: F401
        if cfg_learner.threads:
            torch.set_num_threads(cfg_learner.threads)
        self.cfg, self.algo, self.temperature = cfg_learner, cfg_algorithm, temperature
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
        """Gradients of the loss over `batch` (in token-budget micro-batches), then one optimizer step."""
        algo = self.algo
        index_groups = micro_batches(batch, self.cfg.micro_batch_tokens)
        total_units = aggregation_units(batch.mask, algo.loss_aggregation)
        stats_sum, weight_sum = {}, 0.0
        for index in index_groups:
            micro = batch.subset(index)
            logp, entropy = response_logprobs(self.model, micro.prompt_ids, micro.response_ids, self.temperature,
                                              self.top_k, self.top_p, with_entropy=True)
            T = logp.shape[1]
            mask, adv = micro.mask[:, :T].to(logp.device), micro.advantages[:, :T].to(logp.device)
            rollout_lp = micro.rollout_logprobs[:, :T].to(logp.device)
            old = logp.detach() if micro.old_logprobs is None else micro.old_logprobs[:, :T].to(logp.device)
            loss, stats = policy_loss(logp, old, adv, mask, clip_low=algo.clip_low, clip_high=algo.clip_high,
                                      aggregation=algo.loss_aggregation, max_len=T,
                                      rollout_logprobs=rollout_lp, tis_cap=algo.tis_cap)
            stats["entropy"] = masked_mean(entropy.detach(), mask)
            if algo.entropy_coef:
                loss = loss - algo.entropy_coef * masked_mean(entropy, mask)
            if self.reference is not None and algo.kl_mode == "loss":
                with torch.no_grad():
                    ref, _ = response_logprobs(self.reference, micro.prompt_ids, micro.response_ids, self.temperature)
                kl = kl_loss(logp, ref, mask, estimator=algo.kl_estimator, aggregation=algo.loss_aggregation, max_len=T)
                loss = loss + algo.kl_coef * kl
                stats["kl"] = kl.detach()
            share = float(aggregation_units(micro.mask, algo.loss_aggregation) / total_units)
            self._backward(loss * share)
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + float(v) * share
            weight_sum += share
        metrics = {f"actor/{k}": v / max(weight_sum, 1e-12) for k, v in stats_sum.items()}
        metrics.update({"actor/grad_norm": self._step(), "actor/micro_batches": float(len(index_groups))})
        return metrics

    def _backward(self, loss):
        if self.engine is not None:
            self.engine.backward(loss)
        else:
            loss.backward()

    def _step(self) -> float:
        if self.engine is not None:
            self.engine.step()
            norm = self.engine.get_global_grad_norm()
            return float(norm) if norm is not None else float("nan")
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
    def named_weights(self) -> dict:
        """The policy's tensors under checkpoint names, on the CPU, for the rollout engines.

        Each tensor gets its own storage: DeepSpeed's ZeRO optimizer makes the parameters views into
        one flat buffer, and pickling a view (Ray's object store) writes the whole buffer, once per tensor."""
        return {k: v.detach().clone() if v.device.type == "cpu" else v.detach().cpu()
                for k, v in self.model.state_dict().items()}

    def weight_ipc_handles(self) -> bytes:
        """CUDA IPC handles of the policy's tensors, pickled, for a rollout engine on the same GPU: it maps
        the learner's memory and copies from it. The handles point at the live parameters, so they stay
        valid while the learner does not step (the trainer syncs between steps)."""
        import pickle

        from torch.multiprocessing.reductions import reduce_tensor
        return pickle.dumps({k: reduce_tensor(v.detach()) for k, v in self.model.state_dict().items()})

    def save(self, folder: str):
        """Policy as a transformers checkpoint (vLLM loads it) plus the optimizer and scheduler state."""
        folder = Path(folder)
        self.model.save_pretrained(folder / "policy")
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   folder / "optimizer.pt")

    def load(self, folder: str):
        from safetensors.torch import load_file
        folder = Path(folder)
        state = load_file(folder / "policy" / "model.safetensors")
        self.model.load_state_dict(state, strict=False)
        saved = torch.load(folder / "optimizer.pt", weights_only=False)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])


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
    ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                 "gradient_clipping": cfg.grad_clip or 0.0, "zero_optimization": {"stage": cfg.zero_stage},
                 "bf16": {"enabled": bool(cfg.bf16)}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine
