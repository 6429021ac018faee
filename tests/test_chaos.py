"""Actors killed (SIGKILL) at random while a run goes on: the run completes, keeps one record per step, and
ends with the same policy, bit for bit, as the same run left alone. And an actor that keeps dying stops
the run with a message naming it.

The killer is a thread of this test: it finds the run's actor processes among the descendants of the
driver by their Ray process titles (`ray::RolloutWorker...`, `ray::LearnerWorker...`,
`ray::RewardWorker...`) and kills them
at times drawn from a printed seed."""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

from tests.test_rl_loop import ROOT, metrics_by_step, policy_tensors, run_dir_of, run_rl

CHAOS = ["run.steps=30", "run.save_every=4", "run.eval_every=0", "run.progress_bar=false", "run.max_restarts=10",
         "rollout.n=4", "rollout.prompts_per_step=4", "rollout.max_tokens=6", "data.train_size=256",
         "data.eval_size=8", "learner.micro_batch_tokens=256", "learner.num_workers=2", "reward.num_workers=1", "ray.num_cpus=4"]


def actor_pids(root_pid: int, actor: str) -> list[int]:
    """PIDs of the processes under `root_pid` whose Ray process title names the actor class `actor`."""
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if " ".join(child.cmdline()).startswith(f"ray::{actor}"):
                found.append(child.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def steps_logged(output_dir: Path) -> int:
    files = list(output_dir.glob("*/metrics.jsonl"))
    return sum(1 for _ in files[0].open()) if files else 0


class Killer:
    """Kills one actor of each name in `plan` in turn: each kill waits until the run has logged a step since
    the last one (so every kill hits a working run, not one still recovering) and at least its entry of
    `targets` steps, then a random `gap_s`. Stops early when the run ends. `kills`: (actor, pid) of each
    kill made."""

    def __init__(self, process: subprocess.Popen, output_dir: Path, plan: list[str], seed: int, gap_s,
                 wait_for_progress: bool = True, targets=None):
        self.process, self.output_dir, self.plan, self.gap_s = process, output_dir, plan, gap_s
        self.wait_for_progress, self.targets = wait_for_progress, targets or [0] * len(plan)
        self.rng, self.kills = random.Random(seed), []

    def alive(self) -> bool:
        return self.process.poll() is None

    def __call__(self):
        logged = 0
        for actor, target in zip(self.plan, self.targets):
            while self.alive() and steps_logged(self.output_dir) < max(target, logged + 1):   # going again
                time.sleep(0.1)
            time.sleep(self.rng.uniform(*self.gap_s))
            logged = steps_logged(self.output_dir) if self.wait_for_progress else -1
            while self.alive():
                pids = actor_pids(self.process.pid, actor)
                if pids:
                    pid = self.rng.choice(sorted(pids))
                    os.kill(pid, signal.SIGKILL)
                    self.kills.append((actor, pid))
                    break
                time.sleep(0.2)


def start_run(args, log: Path) -> subprocess.Popen:
    with open(log, "w") as sink:
        return subprocess.Popen([sys.executable, "run_rl.py", "--config", "configs/tiny_cpu.yaml", *args], cwd=ROOT,
                                stdout=sink, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run_with_killer(args, output_dir: Path, plan: list[str], seed: int, timeout_s=900, gap_s=(0.5, 2.0),
                    wait_for_progress=True, targets=None):
    """Run `args` while a Killer works through `plan`; returns (exit code, log text, kills)."""
    log = output_dir.parent / f"{output_dir.name}.log"
    run = start_run([*args, f"run.output_dir={output_dir}"], log)
    killer = Killer(run, output_dir, plan, seed, gap_s, wait_for_progress, targets)
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        code = run.wait(timeout=timeout_s)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    thread.join(timeout=10)
    return code, log.read_text(), killer.kills


def test_a_run_survives_its_actors_being_killed(tmp_path):
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(10**6)))
    print(f"chaos seed {seed} (CHAOS_SEED={seed} repeats the kill times)")
    whole = run_rl([*CHAOS, f"run.output_dir={tmp_path / 'whole'}"], timeout=900)
    assert whole.returncode == 0, whole.stderr[-3000:]
    whole_dir = run_dir_of(whole.stdout)

    plan = ["RolloutWorker", "LearnerWorker", "RewardWorker", "RolloutWorker", "LearnerWorker", "RewardWorker"]
    random.Random(seed).shuffle(plan)
    # the steps each kill waits for, spread over the first two thirds of the 30: a run that two learner
    # restarts set back still has steps left for the last kill (waiting only for one step after the
    # previous kill, a run once finished before the last two kills)
    targets = sorted(random.Random(seed + 1).sample(range(2, 21), len(plan)))
    print("kill after steps:", targets)
    code, log, kills = run_with_killer(CHAOS, tmp_path / "chaos", plan, seed, gap_s=(0.2, 1.0), targets=targets)
    print("kills:", kills)
    assert code == 0, log[-4000:]
    assert {actor for actor, _ in kills} == set(plan), f"the run ended before the kills: {kills}"
    run_dir = next((tmp_path / "chaos").glob("*/metrics.jsonl")).parent

    records = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert sorted(records) == list(range(1, 31)), f"steps logged more or less than once: {records}"
    events = [json.loads(line) for line in (run_dir / "events.jsonl").open()]
    assert {e["event"] for e in events} >= {"engine_restart", "learner_restart"}, events
    steps, reference = metrics_by_step(run_dir), metrics_by_step(whole_dir)
    assert [steps[s]["data/position"] for s in range(1, 31)] == [4.0 * s for s in range(1, 31)]
    for key in ("reward/mean", "actor/grad_norm"):
        assert [steps[s][key] for s in range(1, 31)] == [reference[s][key] for s in range(1, 31)], key
    ours, theirs = policy_tensors(run_dir / "final" / "policy"), policy_tensors(whole_dir / "final" / "policy")
    assert ours.keys() == theirs.keys() and ours
    different = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert not different, f"{len(different)} tensors differ from the undisturbed run, e.g. {different[:3]}"


def test_an_engine_that_keeps_dying_stops_the_run_naming_it(tmp_path):
    """run.max_restarts=2: the rollout engine killed every time it comes back; the third failure in a
    row ends the run with a message naming the engine and the cause."""
    args = [*CHAOS, "run.steps=200", "run.max_restarts=2", "learner.num_workers=1", "reward.num_workers=0"]
    code, log, kills = run_with_killer(args, tmp_path / "doomed", ["RolloutWorker"] * 8, seed=0,
                                       timeout_s=600, gap_s=(0.0, 0.1), wait_for_progress=False)
    print("kills:", kills)
    assert code != 0
    assert code == 3 and "run stopped: rollout engine 0 failed 3 times in a row (run.max_restarts=2)" in log, log[-4000:]
    assert "its process died" in log


def test_an_async_run_survives_an_engine_and_a_learner_rank_being_killed(tmp_path):
    """max_staleness 1 with partial rollouts: rounds are queued on the engine when it dies (the replacement
    redoes them with the current weights) and the learner group restarts from its checkpoint with the
    rollout queue's saved state. The run completes with one record per step and every step's samples
    within the staleness bound plus the rounds a paused sequence spans."""
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(10**6)))
    print(f"chaos seed {seed} (CHAOS_SEED={seed} repeats the kill times)")
    steps = 40          # long enough for both kills and their recoveries on a fast or a slow machine
    args = [*CHAOS, f"run.steps={steps}", "algorithm.max_staleness=1", "rollout.partial=true", "rollout.partial_tokens=2"]
    code, log, kills = run_with_killer(args, tmp_path / "chaos", ["RolloutWorker", "LearnerWorker"], seed,
                                       gap_s=(0.1, 0.5))
    print("kills:", kills)
    assert code == 0, log[-4000:]
    assert [actor for actor, _ in kills] == ["RolloutWorker", "LearnerWorker"], f"the run ended first: {kills}"
    run_dir = next((tmp_path / "chaos").glob("*/metrics.jsonl")).parent
    records = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert sorted(records) == list(range(1, steps + 1)), f"steps logged more or less than once: {records}"
    events = {json.loads(line)["event"] for line in (run_dir / "events.jsonl").open()}
    assert events >= {"engine_restart", "learner_restart"}, events
    steps = metrics_by_step(run_dir)
    assert all(steps[s]["async/staleness_max"] <= 1 + 3 for s in steps)      # k, plus max_tokens / partial_tokens
