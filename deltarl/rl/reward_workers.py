"""Reward workers: Ray actors that score chunks of a step's samples, so the driver only collects.

    pool = RewardWorkerPool(specs, num_workers=4, cpus_per_worker=1)
    batch = pool.score(prompts, responses, rows)      # == compute_rewards(prompts, responses, rows, specs)
    pool.close()

Why: a code reward runs each program in the sandbox (about 30 programs/s on 2 cores); a step of 64
prompts x 16 samples x 4 tests is ~4,000 programs, minutes in one process. Here the samples are cut
into contiguous chunks, each worker (an actor with `cpus_per_worker` CPUs, placed anywhere in the
cluster by Ray) scores one chunk at a time with `compute_rewards`, running its math checks and
sandboxed programs on its own node, and the chunks are put back in order. Every sample is scored
exactly once, by the same per-sample call as in the driver, so the result equals in-driver scoring
(a `batched` reward function sees a chunk instead of the whole step).

A worker that dies (a crash, an OOM kill, a lost node) fails only the chunk it held: the chunk goes
back to the queue and the next free worker takes it, while Ray restarts the dead actor. A chunk that
loses `MAX_ATTEMPTS` workers is scored 0.0 and counted as "<name>/error" for every reward, so a
sample that kills whoever scores it cannot stop the job. `retries` counts re-queued chunks.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque

from deltarl.rewards import RewardBatch, RewardSpec, compute_rewards

logger = logging.getLogger(__name__)
MAX_ATTEMPTS = 3            # workers a chunk may lose before its samples are scored as failures
CHUNKS_PER_WORKER = 4       # chunks per worker and step: small enough to balance, big enough to amortise


class RewardWorker:
    """One Ray actor: the reward specs, loaded once, applied to chunks. Its sandbox runs at most
    `parallel` programs at once (the CPUs Ray gave it), not one per core of the host."""

    def __init__(self, specs: list, parallel: int = 1):
        from deltarl.rewards.sandbox import set_default_parallel

        set_default_parallel(parallel)
        self.specs = [RewardSpec.from_config(s) for s in specs]
        for spec in self.specs:
            spec.resolve()                      # a function that cannot load fails at start-up

    def pid(self) -> int:
        return os.getpid()

    def score(self, prompts: list[str], responses: list[str], rows: list[dict]) -> RewardBatch:
        return compute_rewards(prompts, responses, rows, self.specs)


def spec_config(spec: RewardSpec) -> dict:
    """A spec as plain values for an actor (the function travels by name and is loaded there: a
    reward file's module exists only in the process that imported it)."""
    return {"fn": spec.fn, "name": spec.name, "weight": spec.weight, "timeout_s": spec.timeout_s,
            "kwargs": dict(spec.kwargs), "batched": spec.batched, "isolated": spec.isolated}


def contiguous_chunks(n: int, size: int) -> list[range]:
    """range(n) cut into pieces of `size` (the last one shorter)."""
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def merge(batches: list[RewardBatch], lengths: list[int]) -> RewardBatch:
    """Chunk results, in chunk order, as one batch: totals and parts concatenated (a part a chunk
    lacks, such as a dict reward's extra key no sample of it returned, is zeros there, as in the
    driver), failure counts summed."""
    totals, failures, names = [], {}, []
    for batch in batches:
        totals += batch.totals
        names += [k for k in batch.parts if k not in names]
        for k, v in batch.failures.items():
            failures[k] = failures.get(k, 0) + v
    parts = {k: [x for b, n in zip(batches, lengths) for x in b.parts.get(k, [0.0] * n)] for k in names}
    return RewardBatch(totals, parts, failures)


def failed_chunk(specs: list[RewardSpec], n: int) -> RewardBatch:
    """A chunk no worker survived: every sample 0.0 and an error for every reward."""
    failures = {f"{s.name}/{reason}": (n if reason == "error" else 0)
                for s in specs for reason in ("error", "timeout", "bad_return")}
    return RewardBatch([0.0] * n, {s.name: [0.0] * n for s in specs}, failures)


class RewardWorkerPool:
    """`num_workers` RewardWorker actors (restarted by Ray when they die) and the chunk queue.

    `chunk_size` None cuts each batch into CHUNKS_PER_WORKER chunks per worker. `ready_timeout_s`
    bounds the wait for the workers to be placed and loaded; the error then names the fields.
    """

    def __init__(self, specs: list, num_workers: int, cpus_per_worker: float = 1.0,
                 chunk_size: int | None = None, ready_timeout_s: float = 120.0):
        import ray

        self.specs = [RewardSpec.from_config(s) for s in specs]
        self.chunk_size, self.retries = chunk_size, 0
        actor = ray.remote(RewardWorker).options(num_cpus=cpus_per_worker, max_restarts=-1,
                                                 max_concurrency=1, scheduling_strategy="SPREAD")
        configs, parallel = [spec_config(s) for s in self.specs], max(1, round(cpus_per_worker))
        self.workers = [actor.remote(configs, parallel) for _ in range(num_workers)]
        ready, _ = ray.wait([w.pid.remote() for w in self.workers], num_returns=num_workers,
                            timeout=ready_timeout_s)
        if len(ready) < num_workers:
            self.close()
            raise RuntimeError(
                f"only {len(ready)} of reward.num_workers={num_workers} reward workers started within "
                f"{ready_timeout_s:g} s: each asks reward.cpus_per_worker={cpus_per_worker:g} CPUs beside the "
                f"rollout and learner bundles; the cluster has {ray.cluster_resources().get('CPU', 0):g} "
                "(ray.num_cpus). Lower them or add CPUs")

    def pids(self, timeout_s: float = 60.0) -> list[int]:
        """The workers' process ids, waiting for any that Ray is restarting."""
        import ray

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return ray.get([w.pid.remote() for w in self.workers])
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def score(self, prompts: list[str], responses: list[str], rows: list[dict]) -> RewardBatch:
        """Like compute_rewards(prompts, responses, rows, specs), scored by the workers."""
        import ray

        n = len(prompts)
        if len(responses) != n or len(rows) != n:
            raise ValueError(f"{n} prompts, {len(responses)} responses, {len(rows)} rows: lengths must match")
        size = self.chunk_size or max(1, -(-n // (CHUNKS_PER_WORKER * len(self.workers))))
        chunks = contiguous_chunks(n, size)
        results: list[RewardBatch | None] = [None] * len(chunks)
        attempts = [0] * len(chunks)
        queue, free = deque(range(len(chunks))), deque(self.workers)
        running = {}                                          # ObjectRef -> (chunk, worker)
        while queue or running:
            while queue and free:
                c, worker = queue.popleft(), free.popleft()
                part = chunks[c]
                ref = worker.score.remote(prompts[part.start:part.stop], responses[part.start:part.stop],
                                          rows[part.start:part.stop])
                running[ref] = (c, worker)
                attempts[c] += 1
            done, _ = ray.wait(list(running), num_returns=1)
            c, worker = running.pop(done[0])
            free.append(worker)                               # a dead actor is restarted by Ray
            try:
                results[c] = ray.get(done[0])
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                if attempts[c] < MAX_ATTEMPTS:
                    self.retries += 1
                    queue.append(c)
                    logger.warning("reward worker died scoring samples %d-%d (attempt %d); retrying: %s",
                                   chunks[c].start, chunks[c].stop - 1, attempts[c], type(e).__name__)
                else:
                    results[c] = failed_chunk(self.specs, len(chunks[c]))
                    logger.error("samples %d-%d lost %d reward workers; scored 0 and counted as errors",
                                 chunks[c].start, chunks[c].stop - 1, attempts[c])
        return merge(results, [len(c) for c in chunks])

    def close(self):
        import ray
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers = []


def start_reward_pool(reward_cfg, specs: list, ready_timeout_s: float = 120.0) -> RewardWorkerPool | None:
    """The pool the config asks for (`reward.num_workers` > 0), or None for in-driver scoring."""
    if not reward_cfg.num_workers:
        return None
    return RewardWorkerPool(specs, reward_cfg.num_workers, reward_cfg.cpus_per_worker,
                            reward_cfg.chunk_size, ready_timeout_s)


def score_batch(pool: RewardWorkerPool | None, prompts, responses, rows, specs) -> RewardBatch:
    """Rewards of a batch: through the pool when there is one, else in this process."""
    if pool is None:
        return compute_rewards(prompts, responses, rows, specs)
    return pool.score(prompts, responses, rows)


def reward_metrics(parts: dict[str, list[float]], failures: dict[str, int]) -> dict:
    """A step's reward metrics: the mean of every reward term, `reward/accuracy` from the first term
    that scores 0/1, and the failure counts."""
    from deltarl.rl.evaluate import accuracy_from_scores
    out = {}
    for k, v in parts.items():
        out[f"reward/{k}/mean"] = sum(v) / len(v)
        if "reward/accuracy" not in out and all(x in (0.0, 1.0) for x in v):
            out["reward/accuracy"] = sum(accuracy_from_scores(v)) / len(v)
    out.update({f"reward_fail/{k}": float(v) for k, v in failures.items()})
    return out
