"""The learner group: `learner.num_workers` data-parallel `Learner`s as Ray actors, one DeepSpeed rank each.

The driver talks to the group only (train_step, logprobs, weight export, save, load); the group calls
every rank, because DeepSpeed's collectives (gradient reduction, ZeRO-3 gathers, checkpoints) need them
all. Every rank gets the whole batch (one `ray.put`) and picks its own samples with
`learner.assign_ranks`, so no collective is spent on splitting and the step equals one rank's.

If a rank fails or its process dies, the others may wait in a collective forever: the group waits on
all ranks at once, and on the first failure kills every rank and raises `LearnerGroupError` naming the
rank and the cause. The run then ends; `resume=RUN_DIR` continues from its last checkpoint.
"""
import os
import time

import torch


class LearnerGroupError(RuntimeError):
    """A learner rank failed (or died); every rank of the group has been killed."""


class LearnerWorker:
    """One rank, as a Ray actor. It exists before its `Learner`: rank 0 first names the rendezvous
    (its node's address and a free port), then every rank `start`s with it."""

    def rendezvous(self) -> dict:
        """Where this actor runs: {"address", "port" (free now on this node), "pid"}."""
        import ray

        from deltarl.rl.learner import free_port
        return {"address": ray.util.get_node_ip_address(), "port": free_port(), "pid": os.getpid()}

    def start(self, env: dict, args: tuple, kwargs: dict) -> dict:
        """Set this rank's RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, then build the
        Learner (its DeepSpeed engine joins the group there). Returns {"pid", "address", "backend",
        "gpu_ids" (what Ray assigned), "device" (the policy's), "dist" (the process group's backend)}."""
        import ray
        import torch.distributed as dist

        from deltarl.rl.learner import Learner
        os.environ.update(env)
        self.learner = Learner(*args, **kwargs)
        return {"pid": os.getpid(), "address": ray.util.get_node_ip_address(), "backend": self.learner.backend,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "device": str(next(self.learner.model.parameters()).device),
                "dist": dist.get_backend() if dist.is_initialized() else None}

    def pid(self) -> int:
        return os.getpid()

    def call(self, method: str, *args):
        """`Learner.<method>(*args)` on this rank."""
        return getattr(self.learner, method)(*args)


def rank_env(rank: int, world: int, address: str, port: int) -> dict:
    """The torch.distributed rendezvous of one rank. LOCAL_RANK is 0: Ray shows each actor only its own
    GPUs (CUDA_VISIBLE_DEVICES), so a rank's first visible device is its own."""
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": "0", "MASTER_ADDR": address,
            "MASTER_PORT": str(port)}


def start_learner_group(actor_options: list[dict], *args, **kwargs) -> "LearnerGroup":
    """One learner actor per entry of `actor_options` (Ray options: resources, scheduling strategy),
    rank r built with `Learner(*args, **kwargs)`. Rank 0's actor starts first and names the rendezvous
    (its node IP and a port free there, so two jobs on one node do not collide); then the others start,
    and all build their Learner at once (the process group forms when every rank has joined)."""
    import ray
    worker = ray.remote(LearnerWorker)
    world = len(actor_options)
    actors = [worker.options(**actor_options[0]).remote()]
    group = LearnerGroup(actors)
    where = group._wait([actors[0].rendezvous.remote()], "rendezvous")[0]
    actors += [worker.options(**o).remote() for o in actor_options[1:]]
    group.actors = actors
    refs = [a.start.remote(rank_env(r, world, where["address"], where["port"]), args, kwargs)
            for r, a in enumerate(actors)]
    group.ranks = group._wait(refs, "start")
    return group


class LearnerGroup:
    """The driver's face to the learner ranks (`actors`, rank order). Every method calls all ranks and
    waits for all, failing fast (`LearnerGroupError`) if one fails."""

    def __init__(self, actors: list):
        self.actors = actors
        self.ranks = []             # per rank: what LearnerWorker.start returned

    @property
    def size(self) -> int:
        return len(self.actors)

    # --- training ---------------------------------------------------------------------------------
    def train_step(self, batch) -> dict:
        """One RL step on `batch` (all ranks get all of it; each trains its share); the ranks'
        metrics combined (`combine_metrics`)."""
        import ray
        shared = ray.put(batch)
        return combine_metrics(self._run("train_step", shared))

    def policy_logprobs(self, batch) -> torch.Tensor:
        """The current policy's logprobs [B, T]: each rank computes its samples' rows, 0 elsewhere."""
        import ray
        return sum(self._run("policy_logprobs", ray.put(batch)))

    def reference_logprobs(self, batch) -> torch.Tensor | None:
        """The reference policy's logprobs [B, T] assembled from the ranks, or None when KL is off."""
        import ray
        parts = self._run("reference_logprobs", ray.put(batch))
        return None if parts[0] is None else sum(parts)

    # --- weights and checkpoints ------------------------------------------------------------------
    def named_weights(self, as_ref: bool = False):
        """Rank 0's full weights (every rank joins ZeRO-3's gathers). as_ref: the ObjectRef of rank 0's
        result, to hand to the engines without a copy through this driver."""
        refs = self._call("named_weights")
        self._wait(refs, "named_weights")
        if as_ref:
            return refs[0]
        import ray
        return ray.get(refs[0])

    def weight_ipc_handles(self) -> list[bytes]:
        """Each rank's CUDA IPC handles, rank order: engine i maps those of the rank on its own GPU."""
        return self._run("weight_ipc_handles")

    def broadcast_weights(self, address, bucket_mb: float, receivers=()) -> dict:
        """Rank 0 broadcasts the weights over the weight group at `address` (the others join ZeRO-3's
        gathers), while `receivers` (the engines' receive_weights refs) run; waits for all, failing
        fast. Returns rank 0's {"bytes", "buckets", "seconds"}."""
        return self._run("broadcast_weights", address, bucket_mb, extra=list(receivers))[0]

    def save(self, folder: str):
        """Every rank saves (DeepSpeed's partitions, RNG states); rank 0 also writes the policy."""
        self._run("save", str(folder))

    def load(self, folder: str):
        """Every rank restores what `save` wrote (a checkpoint of another group size is refused)."""
        self._run("load", str(folder))

    def kill(self, timeout_s: float = 60.0):
        """End every rank's process, and return once each is gone: `ray.kill` only asks, and a group started
        next (after a failure) must not meet the old ranks still holding their GPUs and ports."""
        import ray
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        deadline = time.monotonic() + timeout_s
        for rank, actor in enumerate(self.actors):
            while True:
                try:
                    ray.get(actor.pid.remote(), timeout=max(0.1, deadline - time.monotonic()))
                except ray.exceptions.ActorDiedError:
                    break
                except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                    pass                                    # unreachable for now: ask again until the deadline
                if time.monotonic() > deadline:
                    raise LearnerGroupError(f"learner rank {rank} of {len(self.actors)} is still alive "
                                            f"{timeout_s:.0f} s after ray.kill")
                time.sleep(0.05)

    # --- calling every rank -----------------------------------------------------------------------
    def _call(self, method: str, *args) -> list:
        return [a.call.remote(method, *args) for a in self.actors]

    def _run(self, method: str, *args, extra=()) -> list:
        """`method(*args)` on every rank; the ranks' results in rank order."""
        refs = self._call(method, *args)
        return self._wait(refs + list(extra), method)[: len(refs)]

    def _wait(self, refs: list, method: str) -> list:
        """Results of `refs` (the first len(actors) are the ranks', in rank order; the rest, e.g. weight
        receivers, are waited on alike). On the first failure every rank is killed (the others may be
        blocked in a collective with the failed one) and LearnerGroupError names who failed and why."""
        import ray
        pending, results = list(refs), {}
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                results[done[0]] = ray.get(done[0])
            except Exception as error:                      # a task error or a dead actor
                failures = {refs.index(done[0]): error, **self._failures_soon(refs, pending)}
                self.kill()
                who = _root_cause(failures)
                raise LearnerGroupError(_failure_message(who, len(self.actors), method, failures)) from failures[who]
        return [results[r] for r in refs]

    def _failures_soon(self, refs: list, pending: list) -> dict:
        """{index: error} of the refs in `pending` that fail within FAILURE_GRACE_S: when a rank dies, its
        peers' collectives may fail first (a reset connection), and the dead rank is the one to name."""
        import ray
        failures = {}
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=FAILURE_GRACE_S) if pending else ([], [])
        for ref in ready:
            try:
                ray.get(ref)
            except Exception as error:
                failures[refs.index(ref)] = error
        return failures


FAILURE_GRACE_S = 5.0


def _root_cause(failures: dict) -> int:
    """The failure to name first: a dead process (its peers' errors follow from it), else the lowest index."""
    import ray
    dead = [i for i, e in failures.items() if isinstance(e, ray.exceptions.RayActorError)]
    return min(dead or failures)


def _failure_message(who: int, world: int, method: str, failures: dict) -> str:
    """"learner rank 1 of 2 failed in train_step: its process died (...)", then the other failures seen,
    one line each; a ref past the ranks is the weight receiver it was."""
    name = lambda i: f"learner rank {i} of {world}" if i < world else f"weight receiver {i - world}"  # noqa: E731
    lines = [f"{name(who)} failed in {method}: {_cause(failures[who])}"]
    lines += [f"  then {name(i)}: {_cause(e)[:300]}" for i, e in sorted(failures.items()) if i != who]
    lines.append("Every learner rank was stopped (the others could wait in a collective forever); continue the "
                 "run from its last checkpoint with resume=RUN_DIR.")
    return "\n".join(lines)


def _cause(error: Exception) -> str:
    import ray
    if isinstance(error, ray.exceptions.RayActorError):
        return f"its process died ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    if getattr(error, "cause", None) is not None:          # an exception raised in the rank: its own text
        return f"{type(error.cause).__name__}: {error.cause}"     # (the remote traceback stays chained)
    return str(error)


def combine_metrics(per_rank: list[dict]) -> dict:
    """One step's metrics from the ranks' parts: loss parts and token means add up (each rank's are
    shares of the whole batch), maxima take the largest, and what every rank computes alike (the
    global grad norm, LR, update and micro-batch counts) is rank 0's."""
    from deltarl.rl.learner import MAX_METRICS, SAME_METRICS
    keys = list(dict.fromkeys(k for m in per_rank for k in m))
    out = {}
    for k in keys:
        values = [m[k] for m in per_rank if k in m]
        out[k] = per_rank[0][k] if k in SAME_METRICS else max(values) if k in MAX_METRICS else sum(values)
    return out
