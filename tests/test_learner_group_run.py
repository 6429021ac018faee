"""`configs/tiny_cpu.yaml` with two learner ranks end to end through Ray (embedded engine, DeepSpeed ZeRO-2
over gloo), and a learner rank killed with SIGKILL mid-run with `run.max_restarts=0` (no automatic restart:
tests/test_chaos.py has those): the run stops with an error naming the rank, and `resume=RUN_DIR` continues from the last checkpoint with no step lost or repeated (with another
number of ranks it is refused, naming learner.num_workers)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["run.eval_every=0", "run.progress_bar=false", "rollout.n=4", "rollout.prompts_per_step=4",
         "rollout.max_tokens=6", "data.train_size=64", "data.eval_size=8", "learner.micro_batch_tokens=24",
         "learner.num_workers=2", "ray.num_cpus=4"]


def command(args):
    return [sys.executable, "run_rl.py", "--config", "configs/tiny_cpu.yaml", *SMALL, *args]


def metrics_by_step(run_dir: Path) -> dict[int, dict]:
    from deltarl.rl.monitor import read_metrics
    return {int(m["step"]): m for m in read_metrics(run_dir)}


def test_three_steps_with_two_learner_ranks(tmp_path):
    proc = subprocess.run(command(["run.steps=3", "run.save_every=2", f"run.output_dir={tmp_path}"]), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"learner rank 1 of 2: pid \d+ on .*, cpu, process group gloo", proc.stdout)
    run_dir = Path(re.search(r"^run directory: (.+)$", proc.stdout, re.M).group(1))
    steps = metrics_by_step(run_dir)
    assert sorted(s for s in steps if s > 0) == [1, 2, 3]
    for s in (1, 2, 3):
        # 16 samples of up to 6 + ~8 tokens in 24-token micro-batches: several per rank, both ranks busy
        assert steps[s]["actor/micro_batches"] >= 2 and steps[s]["actor/grad_norm"] > 0
        assert 0 < steps[s]["actor/entropy"] and abs(steps[s]["actor/ratio_mean"] - 1.0) < 1e-4
    for folder in (run_dir / "checkpoints" / "step_000002", run_dir / "final"):
        assert (folder / "learner_state_rank1.pt").exists() and (folder / "policy" / "model.safetensors").exists()


def test_kill_9_of_a_learner_rank_fails_the_run_and_resume_continues(tmp_path):
    args = ["run.steps=4", "run.save_every=1", "run.max_restarts=0", f"run.output_dir={tmp_path}"]
    log = tmp_path / "stdout.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(command(args), cwd=ROOT, stdout=out, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    deadline, pid, run_dir = time.time() + 400, None, None
    while time.time() < deadline and run_dir is None:
        found = re.search(r"learner rank 1 of 2: pid (\d+)", log.read_text())
        pid = pid or (found and int(found.group(1)))
        latest = list(tmp_path.glob("*/checkpoints/latest"))
        if pid and latest and latest[0].read_text().strip() >= "step_000001":
            run_dir = latest[0].parent.parent
        time.sleep(0.2)
    assert run_dir is not None, "no checkpoint appeared"
    os.kill(pid, signal.SIGKILL)
    try:
        _, stderr = proc.communicate(timeout=120)          # fails by itself: nobody waits in a collective
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(stderr[-2000:])
    assert proc.returncode != 0
    assert re.search(r"LearnerGroupError: learner rank 1 of 2 failed in \w+: its process died", stderr)
    killed_at = json.loads((run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
                            / "trainer_state.json").read_text())
    assert killed_at["step"] < 4

    # resumed with one learner rank: refused before training, naming the field (DeepSpeed's partitions)
    other = subprocess.run(command([*args, f"run.resume={run_dir}", "learner.num_workers=1"]), cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert other.returncode != 0
    assert "learner.num_workers=2" in other.stderr and "learner.num_workers=1" in other.stderr, other.stderr[-2000:]

    resumed = subprocess.run(command([*args, f"run.resume={run_dir}"]), cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = metrics_by_step(run_dir)
    assert sorted(s for s in steps if s > 0) == [1, 2, 3, 4]
    records = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert sorted(records) == [1, 2, 3, 4], f"a step logged twice or lost: {records}"     # the redone step's replaced
    assert [steps[s]["data/position"] for s in range(1, 5)] == [4.0 * s for s in range(1, 5)]
    final = json.loads((run_dir / "checkpoints" / "step_000004" / "trainer_state.json").read_text())
    assert (final["step"], final["position"]) == (4, 16)

