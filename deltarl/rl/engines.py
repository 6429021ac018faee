"""The rollout engines as the driver uses them: a step's prompts split across them, the learner's weights
pushed into them, and an engine that dies replaced, reloaded and its work redone.

When an engine's process dies, the call in flight fails (`RayActorError`). The driver starts a new
engine actor in the dead one's bundle, loads the current policy into it (a new engine starts from the
run's start-up checkpoint) and resubmits the same prompts with the same sampling seed, so the step
comes out as if nothing had happened. The driver replaces engines itself rather than letting Ray
restart them (`max_restarts`): calls made while Ray restarts an actor wait for it, so an engine that
died every time it started would hang the run, where a replacement that dies fails at once and is
counted against `run.max_restarts`.
"""
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from .recovery import FailureBudget, describe, log_event


def engine_died():
    import ray
    return ray.exceptions.RayActorError


@dataclass
class Engines:
    """The rollout actors, the learner group their weights come from, and how to replace one."""
    actors: list
    start_engine: Callable              # i -> a new engine actor in engine i's bundle
    cfg: object                         # RunConfig
    shared_gpu: bool                    # a vLLM engine shares each learner rank's GPU (colocated)
    learners: object                    # the LearnerGroup (replaced after a learner restart)
    budget: FailureBudget
    run_dir: Path
    version: int = 0                    # the policy version the engines hold: learner steps taken
    weight_group: tuple | None = field(default=None, init=False)   # open_weight_group's, for `broadcast`
    unsettled: dict = field(default_factory=dict, init=False)      # engine -> (actor, ref) of a sync(wait=False)

    def __post_init__(self):
        import ray
        self.weight_group = open_weight_group(self.cfg, ray, self.actors, self.shared_gpu)

    def generate(self, prompt_ids: list, params) -> list:
        """Completions for every prompt: the prompts split into contiguous shards, one per engine (shard i
        sampled with seed + i), returned ordered by prompt, then sample, as one engine would. A shard whose
        engine dies is redone by its replacement with the same seed."""
        return self.wait(self.submit(prompt_ids, params))[0]

    def submit(self, prompt_ids: list, params) -> "Pending":
        """Start `generate` without waiting: each engine queues the call behind those it already holds
        (a weight sync submitted later runs after it), so the shards are sampled by policy `version`."""
        shards = [(i, s) for i, s in enumerate(_contiguous(len(prompt_ids), len(self.actors))) if len(s)]
        pending = Pending(prompt_ids, params, [])
        for i, s in shards:
            pending.shards.append(self._submit_shard(pending, i, s))
        return pending

    def wait(self, pending: "Pending") -> tuple[list, list[int]]:
        """(completions ordered by prompt then sample, the policy version that sampled each) of a
        `submit`. A shard whose engine died is redone by its replacement with the same seed (and the
        current weights, so its version is the current one)."""
        import ray
        out, versions = [], []
        for k, (i, shard, actor, ref, version) in enumerate(pending.shards):
            while True:
                try:
                    completions = ray.get(ref)
                    break
                except engine_died() as error:
                    if self.actors[i] is actor:       # (a call queued behind the failed one finds it replaced)
                        self.replace(i, error)
                    i, shard, actor, ref, version = pending.shards[k] = self._submit_shard(pending, i, shard)
            out += [replace(c, prompt_index=c.prompt_index + shard.start) for c in completions]
            versions += [version] * len(completions)
        return out, versions

    def _submit_shard(self, pending: "Pending", i: int, shard: range) -> tuple:
        params = pending.params if pending.params.seed is None else replace(pending.params,
                                                                             seed=pending.params.seed + i)
        actor = self.actors[i]
        return i, shard, actor, actor.generate.remote([pending.prompt_ids[j] for j in shard], params), self.version

    def sleep(self):
        """Every engine frees its device for the learner (colocated vLLM)."""
        self._each("sleep")

    def wake_up(self):
        self._each("wake_up")

    def sync(self, only: list | None = None, version: int | None = None, wait: bool = True):
        """The learner's current weights (policy `version`, when given) into every engine (or those in
        `only`), replacing any that die. `wait=False` (object-store mode only; the others hand over the
        learner's own memory or need both sides at once) returns once the learner's copy is in the
        object store: each engine loads it when it reaches the call, after the rounds queued before it,
        and the next sync (or `settle`) checks that it did."""
        import ray
        self.settle()
        mode = weight_sync_mode(self.cfg, self.shared_gpu)
        if only is not None and mode == "broadcast":
            # the group spans every engine and the dead one's place in it is gone: a new group, everyone
            self.weight_group, only = open_weight_group(self.cfg, ray, self.actors, self.shared_gpu), None
        refs = submit_weights(self.cfg, self.actors, self.learners, self.shared_gpu, self.weight_group, only)
        if version is not None:
            self.version = version
        if not wait and mode == "object_store":
            self.unsettled = {i: (self.actors[i], ref) for i, ref in refs.items()}
            return
        for i, result in wait_weights(ray, refs).items():
            if isinstance(result, BaseException):
                self.replace(i, result)

    def settle(self):
        """Wait for a sync left in flight by `sync(wait=False)`; an engine that died meanwhile is replaced
        (and so holds the current weights) unless it already was."""
        import ray
        pending, self.unsettled = self.unsettled, {}
        for i, (actor, ref) in pending.items():
            try:
                ray.get(ref)
            except engine_died() as error:
                if self.actors[i] is actor:
                    self.replace(i, error)

    def replace(self, i: int, error: BaseException):
        """Engine i died: count it (the run stops past run.max_restarts in a row), start a new engine in
        its bundle and load the current weights into it."""
        import ray
        self.budget.record(f"rollout engine {i}", error)
        log_event(self.run_dir, "engine_restart", f"rollout engine {i} failed in step {self.budget.step}: "
                  f"{describe(error)}; starting a new one with the current weights and redoing its work",
                  engine=i, step=self.budget.step)
        ray.kill(self.actors[i], no_restart=True)          # (already dead; this frees its handle for good)
        self.actors[i] = self.start_engine(i)
        self.sync(only=[i])

    def _each(self, method: str):
        """`method()` on every engine, waiting for all; an engine that dies is replaced and asked again
        (its replacement is awake: `sleep` then puts it to sleep, `wake_up` does nothing)."""
        import ray
        refs = [getattr(a, method).remote() for a in self.actors]
        for i, ref in enumerate(refs):
            while True:
                try:
                    ray.get(ref)
                    break
                except engine_died() as error:
                    self.replace(i, error)
                    ref = getattr(self.actors[i], method).remote()


@dataclass
class Pending:
    """A generate call in flight: per shard (engine index, its prompt range, the actor asked, the
    result's ObjectRef, the policy version that actor holds for it)."""
    prompt_ids: list
    params: object
    shards: list


def _contiguous(n, parts):
    """Ranges splitting range(n) into `parts` near-equal contiguous pieces."""
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def weight_sync_mode(cfg, shared_gpu: bool) -> str:
    """`rollout.weight_sync` resolved: `auto` is CUDA IPC where a vLLM engine shares the learner's GPU
    and the Ray object store otherwise; `broadcast` is chosen explicitly."""
    mode, vllm_shares = cfg.rollout.weight_sync, shared_gpu and cfg.rollout.engine == "vllm"
    if mode == "auto":
        return "ipc" if vllm_shares else "object_store"
    if mode == "ipc" and not vllm_shares:
        raise RuntimeError("rollout.weight_sync=ipc needs a vLLM engine on the learner's GPU; there is no GPU "
                           "here. Use rollout.weight_sync=auto, object_store or broadcast")
    return mode


def open_weight_group(cfg, ray, rollouts, shared_gpu: bool):
    """For `broadcast`: the weight group's TCPStore, hosted in this driver on a free port, and each
    engine's first rank (rank 0 is the learner; an engine takes one rank per worker process).
    Returns (store, address, base ranks), or None for the other modes. The backend is NCCL where the
    learner and the engines hold GPUs of their own (split placement), gloo otherwise: on the CPU, and
    on one shared GPU, where NCCL refuses two ranks. Keep the store alive while the run lasts."""
    if weight_sync_mode(cfg, shared_gpu) != "broadcast":
        return None
    from deltarl.rollout.weight_transfer import host_store
    sizes = ray.get([w.weight_ranks.remote() for w in rollouts])
    bases = [1 + sum(sizes[:i]) for i in range(len(sizes))]
    gpus = torch.cuda.is_available() or (cfg.ray.num_gpus or 0) > 0
    store, address = host_store(1 + sum(sizes), "nccl" if gpus and cfg.ray.placement == "split" else "gloo")
    return store, address, bases


def sync_weights(cfg, ray, rollouts, learners, shared_gpu: bool, weight_group=None, only=None) -> dict:
    """New policy weights into the rollout engines (all, or the indices in `only`), by `weight_sync_mode`
    (`submit_weights`), waited for. Returns {engine index: True, or the error of an engine that died}."""
    return wait_weights(ray, submit_weights(cfg, rollouts, learners, shared_gpu, weight_group, only))


def submit_weights(cfg, rollouts, learners, shared_gpu: bool, weight_group=None, only=None) -> dict:
    """Start loading new weights into the engines: CUDA IPC handles when vLLM shares a learner rank's
    GPU (engine i maps rank i's memory, device-to-device); a bucketed broadcast over the weight group
    (`open_weight_group`; every engine takes part), learner rank 0 sending while every engine receives
    (the group fails fast if any side fails; this returns once it is done); or the Ray object store
    (rank 0's copy put once, every engine reads it). `learners`: the LearnerGroup. Returns
    {engine index: ObjectRef of its load}."""
    mode = weight_sync_mode(cfg, shared_gpu)
    targets = list(range(len(rollouts))) if only is None else list(only)
    if mode == "ipc":
        payloads = learners.weight_ipc_handles()
        return {i: rollouts[i].update_weights_from_ipc.remote(payloads[i]) for i in targets}
    if mode == "broadcast":
        if len(targets) != len(rollouts):
            raise ValueError("a broadcast sync needs every engine of the weight group")
        _, address, bases = weight_group
        refs = {i: rollouts[i].receive_weights.remote(address, bases[i]) for i in targets}
        learners.broadcast_weights(address, cfg.rollout.weight_sync_bucket_mb, list(refs.values()))
        return refs
    weights = learners.named_weights(as_ref=True)
    return {i: rollouts[i].update_weights.remote(weights) for i in targets}


def wait_weights(ray, refs: dict) -> dict:
    """{engine index: True, or the error of an engine that died} for `submit_weights`' refs."""
    results = {}
    for i, ref in refs.items():
        try:
            ray.get(ref)
            results[i] = True
        except engine_died() as error:
            results[i] = error
    return results
