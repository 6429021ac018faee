"""Reward workers (rl.reward_workers): Ray actors score chunks of a batch exactly as the driver would, survive
a worker killed mid-batch, and contain hostile programs scored inside them."""
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from deltarl.rewards import RewardSpec, compute_rewards
from deltarl.rl.data import make_task
from deltarl.rl.reward_workers import RewardWorkerPool, contiguous_chunks, merge

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def mixed_batch():
    """Math and code samples, right, wrong in form, wrong, and broken, in one batch."""
    maths = make_task("math_word", 6, seed=3)
    codes = make_task("code_io", 4, seed=3)
    prompts, responses, rows = [], [], []
    for i, row in enumerate(maths):
        responses += [row["solution"], "\\boxed{999}", f"the answer is {row['answer']}"]
        prompts += [row["prompt"]] * 3
        rows += [{**row, "tests": codes[0]["tests"]}] * 3
    for row in codes:
        responses += [row["solution"], "```python\nprint(1/0)\n```", "no code here"]
        prompts += [row["prompt"]] * 3
        rows += [{**row, "answer": "1"}] * 3
    return prompts, responses, rows


SPECS = [RewardSpec("math", kwargs={"extract": "boxed"}),
         RewardSpec("code", kwargs={"mode": "fraction", "report_statuses": True}),
         RewardSpec("format", weight=0.1, kwargs={"style": "boxed"})]


def test_chunks_and_merge_keep_order():
    assert [list(r) for r in contiguous_chunks(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    from deltarl.rewards import RewardBatch
    a = RewardBatch([1.0, 2.0], {"x": [1.0, 2.0], "x/extra": [5.0, 6.0]}, {"x/error": 1})
    b = RewardBatch([3.0], {"x": [3.0]}, {"x/error": 2})
    merged = merge([a, b], [2, 1])
    assert merged.totals == [1.0, 2.0, 3.0] and merged.parts == {"x": [1.0, 2.0, 3.0], "x/extra": [5.0, 6.0, 0.0]}
    assert merged.failures == {"x/error": 3}


def test_pool_equals_in_driver_scoring(local_ray):
    prompts, responses, rows = mixed_batch()
    here = compute_rewards(prompts, responses, rows, SPECS)
    pool = RewardWorkerPool(SPECS, num_workers=2, cpus_per_worker=1, chunk_size=5)
    try:
        there = pool.score(prompts, responses, rows)
        assert len(set(pool.pids()) | {os.getpid()}) == 3          # scored in two other processes
    finally:
        pool.close()
    assert there.totals == here.totals
    assert there.parts == here.parts
    assert there.failures == here.failures
    assert sum(here.parts["math"]) == 6 and sum(here.parts["code"]) == 4     # boxed-only: "the answer is" is not
    assert sum(here.parts["code/cases_runtime_error"]) >= 4 and sum(here.parts["code/no_code"]) >= 4


SLOW_REWARD = '''
import os, time
def reward(prompt, response, marker):
    open(marker, "a").write(f"{os.getpid()} {prompt}\\n")
    time.sleep(0.2)
    return float(prompt)
'''


def test_a_worker_killed_mid_batch_costs_its_chunk_a_retry(local_ray, tmp_path):
    """SIGKILL one worker while it scores: the batch still comes back whole, in order, each sample once."""
    (tmp_path / "slow.py").write_text(SLOW_REWARD)
    marker = tmp_path / "calls.log"
    spec = RewardSpec(f"{tmp_path / 'slow.py'}:reward", name="slow", timeout_s=30)
    pool = RewardWorkerPool([spec], num_workers=2, cpus_per_worker=1, chunk_size=4)
    n = 24
    try:
        victim = pool.pids()[0]
        box = {}
        scorer = threading.Thread(target=lambda: box.update(batch=pool.score(
            [str(i) for i in range(n)], ["r"] * n, [{"marker": str(marker)}] * n)))
        scorer.start()
        deadline = time.time() + 60
        while time.time() < deadline and str(victim) not in (marker.read_text() if marker.exists() else ""):
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)                     # mid-chunk: its first sample is being scored
        scorer.join(120)
        assert not scorer.is_alive()
        batch = box["batch"]
        assert batch.totals == [float(i) for i in range(n)]              # every sample, in order, scored once
        assert batch.parts["slow"] == [float(i) for i in range(n)]
        assert batch.failures == {"slow/error": 0, "slow/timeout": 0, "slow/bad_return": 0}
        assert pool.retries >= 1
        survivors = pool.pids()                                       # Ray restarted the killed actor
        assert victim not in survivors and len(survivors) == 2
        calls = [line.split() for line in marker.read_text().splitlines()]
        assert {p for _, p in calls} == {str(i) for i in range(n)}
        assert any(pid == str(victim) for pid, _ in calls)            # the victim did start a chunk
    finally:
        pool.close()


HOSTILE = {
    "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
    "kill_everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\nprint(3)\n",
    "write_outside": "open({victim!r}, 'w').write('owned')\nprint(3)\n",
}


def test_hostile_programs_scored_in_a_worker_are_contained(local_ray, tmp_path):
    """A step's batch with a fork bomb, kill(-1) and a write outside the sandbox, beside a good program:
    the good one passes, the hostile ones score 0, nothing is written, the worker and this process live on."""
    victim = tmp_path / "victim.txt"
    os.chmod(tmp_path, 0o777)
    tests = {"inputs": ["1 2\n"], "outputs": ["3\n"]}
    good = "a,b=map(int,input().split())\nprint(a+b)\n"
    programs = [good] + [p.format(victim=str(victim)) for p in HOSTILE.values()]
    responses = [f"```python\n{p}```" for p in programs]
    spec = RewardSpec("code", kwargs={"report_statuses": True, "timeout_s": 3})
    pool = RewardWorkerPool([spec], num_workers=1, cpus_per_worker=1, chunk_size=2)
    try:
        pid = pool.pids()[0]
        batch = pool.score(["p"] * 4, responses, [{"tests": tests}] * 4)
        assert batch.parts["code"] == [1.0, 0.0, 0.0, 0.0]
        assert batch.failures["code/error"] == 0
        assert not victim.exists()
        assert pool.pids() == [pid] and pool.retries == 0                  # the worker was not hurt
        again = pool.score(["p"], [responses[0]], [{"tests": tests}])     # and goes on scoring
        assert again.parts["code"] == [1.0]
    finally:
        pool.close()
    assert Path("/proc/self").exists()


def test_workers_that_cannot_be_placed_fail_with_the_fields_named(local_ray):
    with pytest.raises(RuntimeError, match="reward.num_workers=2.*reward.cpus_per_worker=3"):
        RewardWorkerPool([RewardSpec("math")], num_workers=2, cpus_per_worker=3, ready_timeout_s=3)


def test_an_rl_run_scores_through_reward_workers(tmp_path):
    """configs/math_cpu.yaml for 2 steps: rewards and the evaluations scored by 2 reward workers."""
    import json
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "run_rl.py", "--config", "configs/math_cpu.yaml", f"run.output_dir={tmp_path}",
                           "run.steps=2", "run.eval_every=2", "run.save_every=0", "run.progress_bar=false",
                           "rollout.n=4", "rollout.prompts_per_step=4", "rollout.eval_n=1", "data.train_size=64",
                           "data.eval_size=8"], cwd=root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1].split("run directory: ")[-1])
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [m for m in steps if "reward/math/mean" in m]
    assert len(trained) == 2 and all(m["time/reward_driver_cpu_s"] < m["time/reward_s"] + 1 for m in trained)
    assert all(m["reward_fail/math/error"] == 0 for m in trained)
    assert "eval/greedy_accuracy" in steps[-1]
