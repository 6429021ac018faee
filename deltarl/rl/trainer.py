"""The RL loop: rollout -> rewards -> advantages -> learner step -> weight sync, with logs and checkpoints.

The rollout engines and the learner ranks (`learner_group`) are Ray actors in one placement group:
colocated (engine i beside learner rank i in one bundle) or split (a bundle each);
this driver holds only the prompts, the rewards and the bookkeeping.
"""
import os
import random
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from deltarl.rewards import RewardSpec
from deltarl.rl.algorithms import (compute_advantages, dynamic_sampling_filter, groups_needed, kl_penalty,
                                   overlong_shaping)
from deltarl.rl.config import ConfigError, RunConfig, config_to_dict, save_config
from deltarl.rl.data import load_prompt_dataset, make_task
from deltarl.rl.evaluate import evaluate
from deltarl.rl.monitor import Monitor, plot_run, progress
from deltarl.rollout import SamplingParams

from . import checkpoint as ckpt
from .engines import Engines
from .recovery import FailureBudget, describe, log_event
from .reward_workers import reward_metrics, score_batch, start_reward_pool
from .rollout_queue import RolloutQueue
from .samples import batch_from_completions, concat_batches


class _Stop:
    """Set by SIGTERM or SIGINT (Ctrl-C): the loop finishes its step, checkpoints and exits. A second
    SIGINT while it does raises KeyboardInterrupt at once, for a user who will not wait."""
    requested = False

    @classmethod
    def install(cls):
        def handler(signum, frame):
            if cls.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            cls.requested = True
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def prepare_run_dir(cfg: RunConfig) -> Path:
    """The run's directory: run.resume's, or a new `run.output_dir/run.name-TIME`. With resume=auto, the
    newest `run.name-*` directory under run.output_dir that holds a checkpoint (a driver started again
    after it died continues its run), else a new one."""
    if cfg.run.resume == "auto":
        found = sorted(p.parent.parent for p in Path(cfg.run.output_dir).glob(f"{cfg.run.name}-*/checkpoints/latest"))
        if found:
            cfg.run.resume = str(found[-1])
        else:
            cfg.run.resume = None
    if cfg.run.resume:
        return Path(cfg.run.resume)
    run_dir = Path(cfg.run.output_dir) / f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def initial_policy(cfg: RunConfig, run_dir: Path, tokenizer) -> str:
    """A checkpoint folder to start from: the configured one, or a fresh small model saved in the run
    (made once: a resumed run finds it, as its KL reference)."""
    if cfg.model.path:
        return cfg.model.path
    if (run_dir / "init" / "config.json").exists():
        return str(run_dir / "init")
    from deltarl.model import KimiLinearForCausalLM, tiny_config
    torch.manual_seed(cfg.run.seed)
    config = tiny_config(vocab_size=-(-len(tokenizer) // 64) * 64, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **cfg.model.init)
    folder = run_dir / "init"
    KimiLinearForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def load_rows(cfg: RunConfig, tokenizer):
    """(train rows, eval rows): a built-in task, or a local dataset with a held-out split."""
    d = cfg.data
    if d.task:
        eval_seed = cfg.run.seed + 10_000 if d.eval_seed is None else d.eval_seed
        held_out = make_task(d.task, d.eval_size, seed=eval_seed, difficulty=d.difficulty, **d.task_options)
        seen = {r["prompt"] for r in held_out}      # small tasks repeat prompts: keep the eval set unseen
        train = [r for r in make_task(d.task, d.train_size, seed=cfg.run.seed, difficulty=d.difficulty,
                                      **d.task_options) if r["prompt"] not in seen]
        for extra in d.extra_train:                 # other difficulties / options of the same task
            train += [r for r in make_task(d.task, extra.size, seed=cfg.run.seed, difficulty=extra.difficulty,
                                           **{**d.task_options, **extra.task_options}) if r["prompt"] not in seen]
        return train, held_out
    kwargs = dict(columns=d.columns, tokenizer=tokenizer if d.apply_chat_template else None,
                  system_prompt=d.system_prompt)
    rows, report = load_prompt_dataset(d.path, **kwargs)
    print(report)
    if d.eval_path:
        return rows, load_prompt_dataset(d.eval_path, **kwargs)[0][: d.eval_size]
    return rows[d.eval_size:], rows[: d.eval_size]


def vllm_context_length(cfg: RunConfig, tokenizer, rows) -> int | None:
    """vLLM's max_model_len for this run: `rollout.max_model_len`, or (null) the longest prompt of `rows`
    plus `rollout.max_tokens`. None for the embedded engine. Raises ConfigError where the setting is
    too short for a prompt and its response (vLLM would refuse the request in the middle of the run)."""
    r = cfg.rollout
    if r.engine != "vllm":
        return None
    longest = max((len(tokenizer(row["prompt"]).input_ids) for row in rows), default=0)
    needed = longest + r.max_tokens
    if r.max_model_len is not None and r.max_model_len < needed:
        raise ConfigError(f"rollout.max_model_len: {r.max_model_len} tokens do not hold the longest prompt "
                          f"({longest} tokens) and rollout.max_tokens ({r.max_tokens}); set it to at least "
                          f"{needed}, or null to size it from the data")
    return needed if r.max_model_len is None else r.max_model_len


def engine_kwargs(cfg: RunConfig, tokenizer_path: str, max_model_len: int | None) -> dict:
    """Keyword arguments of `make_engine` (after kind and checkpoint) for this run's engines."""
    kwargs = dict(tokenizer_path=tokenizer_path, max_batch_size=cfg.rollout.max_batch_size)
    if cfg.rollout.engine != "vllm":
        return kwargs | dict(dtype=cfg.model.dtype)
    return kwargs | dict(dtype="bfloat16", gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                         enforce_eager=cfg.rollout.enforce_eager, max_model_len=max_model_len,
                         **cfg.rollout.vllm_kwargs)


class PromptStream:
    """Deterministic prompt order: a seeded shuffle per epoch, addressed by a position that the
    checkpoint records."""

    def __init__(self, rows, seed: int, shuffle: bool, position: int = 0):
        self.rows, self.seed, self.shuffle, self.position = rows, seed, shuffle, position
        self._epoch_order = (None, [])

    def _order(self, epoch):
        if self._epoch_order[0] != epoch:          # one shuffle per epoch, not per prompt taken
            order = list(range(len(self.rows)))
            if self.shuffle:
                random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._epoch_order = (epoch, order)
        return self._epoch_order[1]

    def take(self, n: int) -> list[dict]:
        out = []
        for p in range(self.position, self.position + n):
            epoch, i = divmod(p, len(self.rows))
            out.append(self.rows[self._order(epoch)[i]])
        self.position += n
        return out


@dataclass
class Placement:
    """Where the actors go: the placement group's bundles, the bundle of each engine and of each learner
    rank, and the GPUs each actor asks of its bundle (halves where an engine and a rank share one)."""
    bundles: list[dict]
    engine_bundles: list[int]
    learner_bundles: list[int]
    engine_gpus: list[float]
    learner_gpus: list[float]


def plan_placement(cfg: RunConfig, gpus: bool) -> Placement:
    """Bundles sized from the config. `gpus`: the cluster has GPUs (an engine takes
    `rollout.gpus_per_worker` and a learner rank `learner.gpus_per_worker`, by default 1 there and 0 on
    the CPU). Colocated: bundle i holds engine i and learner rank i where both exist, sharing its GPU;
    split: a bundle per engine, then one per rank (fractions, e.g. 0.5 each, put an engine and a rank in
    separate processes on one GPU, running at the same time)."""
    engines, ranks = cfg.rollout.num_workers, cfg.learner.num_workers
    default_gpu = 1 if gpus else 0
    engine_gpu = cfg.rollout.gpus_per_worker if cfg.rollout.gpus_per_worker is not None else default_gpu
    rank_gpu = cfg.learner.gpus_per_worker if cfg.learner.gpus_per_worker is not None else default_gpu
    bundle = lambda cpus, gpu: {"CPU": cpus, **({"GPU": gpu} if gpu else {})}    # noqa: E731
    if cfg.ray.placement == "split":
        return Placement([bundle(1, engine_gpu)] * engines + [bundle(1, rank_gpu)] * ranks, list(range(engines)),
                         list(range(engines, engines + ranks)), [engine_gpu] * engines, [rank_gpu] * ranks)
    bundles, engine_gpus, learner_gpus = [], [], []
    for i in range(max(engines, ranks)):
        both = i < engines and i < ranks
        gpu = max(engine_gpu if i < engines else 0, rank_gpu if i < ranks else 0)
        bundles.append(bundle((i < engines) + (i < ranks), gpu))
        engine_gpus += [gpu / 2 if both else gpu] if i < engines else []
        learner_gpus += [gpu / 2 if both else gpu] if i < ranks else []
    return Placement(bundles, list(range(engines)), list(range(ranks)), engine_gpus, learner_gpus)


def reserve(cfg: RunConfig, bundles: list[dict]):
    """The placement group of `bundles` (strategy `ray.placement_strategy`), ready; if the cluster cannot
    hold it within `ray.placement_timeout_s`, it is removed and the error names the fields that size it
    and what was asked against what the cluster has."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    group = placement_group(bundles, strategy=cfg.ray.placement_strategy)
    ready, _ = ray.wait([group.ready()], timeout=cfg.ray.placement_timeout_s)
    if ready:
        return group
    remove_placement_group(group)
    asked = {k: sum(b.get(k, 0) for b in bundles) for k in ("CPU", "GPU")}
    have = {k: ray.cluster_resources().get(k, 0) for k in ("CPU", "GPU")}
    raise RuntimeError(
        f"the Ray cluster cannot hold this run's placement group within ray.placement_timeout_s="
        f"{cfg.ray.placement_timeout_s}: asked {len(bundles)} bundles {bundles} ({asked['CPU']:g} CPU, "
        f"{asked['GPU']:g} GPU) with ray.placement_strategy={cfg.ray.placement_strategy}; the cluster has "
        f"{have['CPU']:g} CPU, {have['GPU']:g} GPU (ray.cluster_resources()). The bundles come from "
        f"rollout.num_workers={cfg.rollout.num_workers}, learner.num_workers={cfg.learner.num_workers}, "
        f"learner.gpus_per_worker={cfg.learner.gpus_per_worker}, ray.placement={cfg.ray.placement}: lower them, "
        "or add nodes")


def start_actors(cfg: RunConfig, policy_path: str, tokenizer_path: str, total_steps: int,
                 initial_path: str | None = None, max_model_len: int | None = None):
    """Local Ray (or the cluster in RAY_ADDRESS / ray.address), a placement group (`plan_placement`), the
    rollout engines and the learner group. The engines start from `policy_path`; the learner ranks from
    the run's initial policy `initial_path` (its KL reference; a resume then loads the checkpoint).

    Returns (rollout actors, LearnerGroup, whether the engines share their GPU with a learner rank, and
    the functions that start a new engine i and a new learner group in the same bundles, to replace
    ones that die)."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from deltarl.rollout import rollout_actor_class

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():      # "local": a new local Ray, even where `ray start` left one running
        ray.init(address=address or "local", num_cpus=None if address else cfg.ray.num_cpus,
                 num_gpus=None if address else cfg.ray.num_gpus, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    gpus = ray.cluster_resources().get("GPU", 0) > 0
    plan = plan_placement(cfg, gpus)
    group = reserve(cfg, plan.bundles)
    strategy = lambda i: PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i)  # noqa: E731
    rollout_kwargs = engine_kwargs(cfg, tokenizer_path, max_model_len)

    def start_engine(i):
        return rollout_actor_class(num_cpus=1, num_gpus=plan.engine_gpus[i]).options(
            scheduling_strategy=strategy(plan.engine_bundles[i])).remote(cfg.rollout.engine, policy_path,
                                                                         **rollout_kwargs)

    def start_learners():
        return start_learner_ranks(cfg, plan, strategy, initial_path or policy_path, total_steps)
    rollouts = [start_engine(i) for i in range(len(plan.engine_bundles))]
    return rollouts, start_learners(), gpus and cfg.ray.placement == "colocated", start_engine, start_learners


def start_learner_ranks(cfg: RunConfig, plan: Placement, strategy, model_path: str, total_steps: int):
    """The learner group, a rank in each of the plan's learner bundles, built from `model_path`."""
    from deltarl.rl.learner_group import start_learner_group
    learners = start_learner_group(
        [dict(num_cpus=1, num_gpus=g, scheduling_strategy=strategy(b)) for b, g in zip(plan.learner_bundles,
                                                                                        plan.learner_gpus)],
        model_path, cfg.learner, cfg.algorithm, cfg.rollout.temperature, total_steps,
        cfg.model.gradient_checkpointing, top_k=cfg.rollout.top_k, top_p=cfg.rollout.top_p,
        max_tokens=cfg.rollout.max_tokens)
    for r, where in enumerate(learners.ranks):
        print(f"learner rank {r} of {learners.size}: pid {where['pid']} on {where['address']}, GPUs "
              f"{where['gpu_ids']}, {where['device']}, process group {where['dist']}", flush=True)
    return learners


def score(cfg, tokenizer, rows, completions, specs, pool=None):
    """Decode responses, run the reward functions (in the reward workers `pool`, or here when None);
    returns (texts, RewardBatch)."""
    texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]
    batch = score_batch(pool, [rows[c.prompt_index]["prompt"] for c in completions], texts,
                        [rows[c.prompt_index] for c in completions], specs)
    return texts, batch


MAX_SAMPLING_ROUNDS = 4   # generate rounds per step under dynamic sampling (the first one included)


def collect(cfg, engines, tokenizer, stream, specs, step, metrics, reward_pool=None):
    """Generate for one step's prompts. With dynamic sampling (DAPO), drop groups whose rewards are all
    equal and refill: each round asks for `groups_needed(kept, target, kept / generated)` new prompts
    (the missing groups over the keep rate so far, floored at 10%), until `rollout.prompts_per_step`
    groups are kept or MAX_SAMPLING_ROUNDS rounds ran; then the first prompts_per_step kept groups are
    used (a surplus is dropped, its prompts stay consumed). Returns (rollout batch, rewards tensor)."""
    params = SamplingParams(n=cfg.rollout.n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                            top_k=cfg.rollout.top_k, max_tokens=cfg.rollout.max_tokens,
                            ignore_eos=cfg.rollout.ignore_eos, seed=cfg.run.seed * 1_000_003 + step)
    kept_batches, kept_rewards, kept_rows, parts, failures = [], [], [], {}, {}
    target, kept_groups, rounds, dropped = cfg.rollout.prompts_per_step, 0, 0, 0
    t_gen = t_reward = cpu_reward = 0.0
    tokens = 0
    while kept_groups < target and rounds < (MAX_SAMPLING_ROUNDS if cfg.algorithm.dynamic_sampling else 1):
        keep_rate = kept_groups / len(kept_rows) if kept_rows else 1.0
        rows = stream.take(groups_needed(kept_groups, target, keep_rate))
        prompt_ids = [tokenizer(r["prompt"]).input_ids for r in rows]
        t0 = time.perf_counter()
        completions = engines.generate(prompt_ids, params)
        t_gen += time.perf_counter() - t0
        tokens += sum(len(c.token_ids) for c in completions)
        t0, cpu0 = time.perf_counter(), time.process_time()
        _, reward_batch = score(cfg, tokenizer, rows, completions, specs, reward_pool)
        t_reward, cpu_reward = t_reward + time.perf_counter() - t0, cpu_reward + time.process_time() - cpu0
        batch = batch_from_completions(prompt_ids, completions)
        rewards = torch.tensor(reward_batch.totals)
        for k, v in reward_batch.parts.items():
            parts.setdefault(k, []).extend(v)
        for k, v in reward_batch.failures.items():
            failures[k] = failures.get(k, 0) + v
        keep = torch.ones(batch.size, dtype=torch.bool)
        if cfg.algorithm.dynamic_sampling:
            keep = dynamic_sampling_filter(rewards, batch.group_ids)
            dropped += int((~keep).sum()) // cfg.rollout.n
        index = keep.nonzero()[:, 0].tolist()
        batch = batch.subset(index)
        batch.group_ids = batch.group_ids + len(kept_rows)      # group ids unique across rounds
        kept_batches.append(batch)
        kept_rewards.append(rewards[index])
        kept_rows += rows
        kept_groups += len(set(batch.group_ids.tolist()))
        rounds += 1
    batch, rewards = first_groups(concat_batches(kept_batches),
                                  torch.cat(kept_rewards) if kept_rewards else torch.zeros(0), target)
    metrics.update({"time/rollout_s": t_gen, "time/reward_s": t_reward, "time/reward_driver_cpu_s": cpu_reward,
                    "perf/rollout_tokens_per_s": tokens / max(t_gen, 1e-9),
                    "rollout/dropped_groups": float(dropped), "rollout/rounds": float(rounds),
                    "rollout/generated_prompts": float(len(kept_rows))})
    metrics.update(reward_metrics(parts, failures))
    return batch, rewards


def first_groups(batch, rewards, count: int):
    """(batch, rewards [B]) restricted to the samples of the `count` smallest group ids, i.e. the first
    groups generated (ids grow with the prompt order across rounds)."""
    chosen = batch.group_ids.unique()[:count]                      # sorted ascending
    index = torch.isin(batch.group_ids, chosen).nonzero()[:, 0].tolist()
    return batch.subset(index), rewards[index]


def advantages_for(cfg, batch, rewards, kl_logprobs=None):
    """Shaped rewards -> per-token advantages [B, T] with the configured estimator.

    kl_logprobs: (old-policy logprobs, reference logprobs), each [B, T], both from the learner, for
    KL as a reward: -kl_coef * kl_penalty(old, ref) per token (k1 by default). The learner's own old
    logprobs, not the rollout engine's: the engine's differ from the learner's by kernel and precision
    noise that can exceed the KL being measured."""
    algo = cfg.algorithm
    lengths = batch.mask.sum(1)
    if algo.overlong_buffer:
        rewards = rewards + overlong_shaping(lengths, cfg.rollout.max_tokens, algo.overlong_buffer,
                                             algo.overlong_penalty)
    token_rewards = None
    if kl_logprobs is not None and algo.kl_mode == "reward":
        T = batch.mask.shape[1]
        old, ref = (x[:, :T] for x in kl_logprobs)
        token_rewards = -algo.kl_coef * kl_penalty(old, ref, algo.kl_estimator, mask=batch.mask)
    kwargs = {"token_rewards": token_rewards} if token_rewards is not None else {}
    return compute_advantages(algo.advantage, rewards, batch.group_ids, batch.mask, **kwargs)


def train(cfg: RunConfig) -> Path:
    """Run (or resume) the job described by `cfg`; returns the run directory."""
    from deltarl.model import load_tokenizer
    from deltarl.rl.learner_group import LearnerGroupError

    run_dir = prepare_run_dir(cfg)
    save_config(cfg, run_dir / "config.yaml")
    random.seed(cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    resume_from = ckpt.latest_checkpoint(run_dir) if cfg.run.resume else None
    tokenizer = load_tokenizer(cfg.tokenizer if cfg.tokenizer != "builtin:char" or not cfg.model.path
                               else cfg.model.path)
    initial_path = initial_policy(cfg, run_dir, tokenizer)       # the KL reference, also on resume
    policy_path = str(resume_from / "policy") if resume_from else initial_path
    tokenizer_path = policy_path if (Path(policy_path) / "tokenizer_config.json").exists() else cfg.tokenizer
    train_rows, eval_rows = load_rows(cfg, tokenizer)
    specs = [RewardSpec.from_config({k: v for k, v in vars(f).items()}) for f in cfg.reward.functions]

    state = ckpt.load_trainer_state(resume_from) if resume_from else {"step": 0, "position": 0}
    max_model_len = vllm_context_length(cfg, tokenizer, train_rows + eval_rows)
    rollouts, learners, shared_gpu, start_engine, start_learners = start_actors(
        cfg, policy_path, tokenizer_path, cfg.run.steps, initial_path, max_model_len)
    budget = FailureBudget(cfg.run.max_restarts)
    engines = Engines(rollouts, start_engine, cfg, shared_gpu, learners, budget, run_dir, version=state["step"])
    reward_pool = start_reward_pool(cfg.reward, specs, cfg.ray.placement_timeout_s)   # None: score here
    if resume_from:
        learners.load(str(resume_from))
    stream = PromptStream(train_rows, cfg.run.seed, cfg.data.shuffle, state["position"])
    queue = rollout_queue(cfg, engines, tokenizer, stream, specs, reward_pool, resume_from)
    monitor = Monitor(run_dir, cfg.run.log, cfg.run.name, config_to_dict(cfg))
    if resume_from:
        monitor.rewind(state["step"])
        log_event(run_dir, "resume", f"resumed from checkpoint step {state['step']}: later steps are redone and "
                  "their earlier records dropped", step=state["step"])
    bar = progress(cfg.run.steps, cfg.run.progress_bar, initial=state["step"])
    _Stop.install()

    def run_eval(step):
        eval_temperature = cfg.rollout.eval_temperature or cfg.rollout.temperature   # null: the rollout's
        metrics = evaluate(engines.generate, tokenizer, eval_rows, specs, cfg.rollout.max_tokens,
                           cfg.rollout.eval_n, eval_temperature, seed=cfg.run.seed, reward_pool=reward_pool)
        monitor.log(step, metrics)
        bar.write(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        return metrics

    def run_step(step):
        """Step `step`: rollouts, rewards, the learner's update, weight sync, logs, evaluation and
        checkpoints (the final one after the last step)."""
        t_step = time.perf_counter()
        metrics = {}
        if queue is None:
            batch, rewards = collect(cfg, engines, tokenizer, stream, specs, step, metrics, reward_pool)
        else:       # rounds for steps up to step + max_staleness in flight, then this step's groups
            queue.fill(step + cfg.algorithm.max_staleness)
            batch, rewards = queue.take(step, metrics)
        if batch.size == 0:
            bar.write(f"step {step}: every group had equal rewards; nothing to learn from")
        else:
            metrics.update(learn(cfg, engines, batch, rewards, step, wait_sync=queue is None))
            lengths = batch.mask.sum(1)
            metrics.update({"reward/mean": rewards.mean().item(),
                            "reward/std": rewards.std().item() if rewards.numel() > 1 else 0.0,
                            "response/length_mean": lengths.mean().item(), "response/length_max": lengths.max().item(),
                            "response/truncated_frac": batch.truncated.float().mean().item(),
                            "data/position": float(stream.position), "time/step_s": time.perf_counter() - t_step})
            metrics["perf/samples_per_s"] = batch.size / metrics["time/step_s"]
            monitor.log(step, metrics)
            bar.update(metrics)
            if cfg.run.eval_every and step % cfg.run.eval_every == 0:
                run_eval(step)
        if step == cfg.run.steps:
            final = run_dir / "final"
            engines.learners.save(str(final))
            tokenizer.save_pretrained(final / "policy")
        if (cfg.run.save_every and step % cfg.run.save_every == 0) or _Stop.requested or step == cfg.run.steps:
            save_checkpoint(engines.learners, tokenizer, run_dir, step, stream.position, queue)

    if state["step"] == 0 and cfg.run.eval_every:
        run_eval(0)
    start_state = {"step": 0, "position": 0, "rng": ckpt.rng_state()}    # a restart with no checkpoint yet
    step = state["step"]
    while step < cfg.run.steps and not _Stop.requested:
        budget.step = step + 1
        try:
            run_step(step + 1)
        except LearnerGroupError as error:
            while True:                    # (the new group may fail too, while it starts or loads)
                budget.record("the learner group", error)
                try:
                    state = restart_learners(run_dir, start_learners, engines, monitor, start_state, step + 1, error)
                    break
                except LearnerGroupError as again:
                    error = again
            step, stream = state["step"], PromptStream(train_rows, cfg.run.seed, cfg.data.shuffle, state["position"])
            queue = rollout_queue(cfg, engines, tokenizer, stream, specs, reward_pool, ckpt.latest_checkpoint(run_dir))
            continue
        step += 1
        budget.step_done(step)
    if reward_pool is not None:
        reward_pool.close()
    bar.close()
    monitor.close()
    plot_run(run_dir)
    return run_dir


def rollout_queue(cfg, engines, tokenizer, stream, specs, reward_pool, checkpoint=None) -> RolloutQueue | None:
    """The asynchronous rollout queue (with algorithm.max_staleness > 0 or rollout.partial), restored
    from `checkpoint` when given; None for the synchronous loop (`collect`)."""
    if cfg.algorithm.max_staleness == 0 and not cfg.rollout.partial:
        return None
    queue = RolloutQueue(cfg, engines, tokenizer, stream,
                         lambda rows, completions: score(cfg, tokenizer, rows, completions, specs, reward_pool)[1],
                         max_refills=MAX_SAMPLING_ROUNDS - 1)
    if checkpoint is not None:
        queue.load_state_dict(ckpt.load_rollout_queue(checkpoint))
    return queue


def learn(cfg, engines, batch, rewards, step: int, wait_sync: bool = True) -> dict:
    """The learner's part of step `step`: (colocated: the engines sleep) advantages, the update, then
    the new weights (policy version `step`) into the engines (`wait_sync=False`, the asynchronous loop:
    without waiting for engines busy with rounds queued before the weights). Returns its metrics."""
    metrics, learners = {}, engines.learners
    if engines.shared_gpu:      # the engine sleeps (weights to host, cache freed) while the learner trains
        t0 = time.perf_counter()
        engines.sleep()
        metrics["time/offload_s"] = time.perf_counter() - t0
    kl_logprobs = None
    if cfg.algorithm.kl_mode == "reward" and cfg.algorithm.kl_coef > 0:
        kl_logprobs = [learners.policy_logprobs(batch), learners.reference_logprobs(batch)]
    batch.advantages = advantages_for(cfg, batch, rewards, kl_logprobs)
    t0 = time.perf_counter()
    metrics.update(learners.train_step(batch))
    metrics["time/train_s"] = time.perf_counter() - t0
    metrics["perf/train_tokens_per_s"] = (sum(map(len, batch.prompt_ids)) + batch.mask.sum().item()) / \
        metrics["time/train_s"]
    t0 = time.perf_counter()
    if engines.shared_gpu:
        engines.wake_up()
    engines.sync(version=step, wait=wait_sync)
    metrics["time/sync_s"] = time.perf_counter() - t0
    return metrics


def restart_learners(run_dir, start_learners, engines, monitor, start_state, failed_step, error) -> dict:
    """The learner group failed in step `failed_step` (every rank is already stopped): start a new group,
    restore the last checkpoint (or the run's start when there is none yet) with the driver's RNG and
    data position, load its policy into the engines and drop the metrics of the steps to redo.
    Returns the restored trainer state ({"step", "position", ...})."""
    latest = ckpt.latest_checkpoint(run_dir)
    back_to = ckpt.load_trainer_state(latest)["step"] if latest else 0
    log_event(run_dir, "learner_restart", f"the learner group failed in step {failed_step}: {describe(error)}; "
              f"starting it again from {f'checkpoint step {back_to}' if latest else 'the start'} and redoing steps "
              f"{back_to + 1}-{failed_step}", failed_step=failed_step, resumed_from=back_to)
    learners = start_learners()
    if latest:
        learners.load(str(latest))
        state = ckpt.load_trainer_state(latest)          # the driver's RNG states too
    else:
        state = start_state
        ckpt.set_rng_state(start_state["rng"])
    engines.learners = learners
    if engines.shared_gpu:
        engines.wake_up()
    engines.sync(version=state["step"])
    monitor.rewind(state["step"])
    return state


def save_checkpoint(learners, tokenizer, run_dir, step, position, queue=None):
    """Every learner rank's part of checkpoint `step`, the tokenizer beside the policy, the trainer's
    state (and the rollout queue's, its rounds in flight waited for first), then `latest` pointed at it
    (last, so a crash midway leaves the previous one latest)."""
    folder = ckpt.checkpoint_dir(run_dir, step)
    if queue is not None:
        queue.drain()
    learners.save(str(folder))
    tokenizer.save_pretrained(folder / "policy")
    if queue is not None:
        ckpt.save_rollout_queue(folder, queue.state_dict())
    ckpt.save_trainer_state(folder, step, position)
    ckpt.mark_latest(run_dir, folder)
