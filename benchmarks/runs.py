"""Running run_rl.py from a benchmark: one job with its overrides, its output kept in a log file."""
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEADY_FROM = 3  # the first steps pay for compilation and warm caches; means start here


def run_job(config: str, overrides: list[str], log: Path, timeout: float | None = None) -> Path:
    """Run `run_rl.py --config config overrides...` to the end, write its stdout and stderr to `log`, and return
    its run directory. Raises RuntimeError (the exit code and the end of stderr) when it fails, and
    subprocess.TimeoutExpired past `timeout` seconds."""
    command = [sys.executable, "run_rl.py", "--config", config, *overrides]
    print(" ".join(command), flush=True)
    t0 = time.time()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"run_rl.py exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    print(f"  done in {time.time() - t0:.0f} s", flush=True)
    return Path(re.findall(r"^run directory: (.+)$", proc.stdout, re.M)[-1])


def step_records(metrics: Path) -> list[dict]:
    """A run's per-step records from its metrics.jsonl (not the eval-only ones), in step order."""
    records = [json.loads(line) for line in metrics.open()]
    return sorted((r for r in records if "time/step_s" in r), key=lambda r: r["step"])


def steady_means(steps: list[dict]) -> dict:
    """Step-time split and samples/s over the steady steps (from STEADY_FROM; all steps when the run is
    shorter): means of the time keys, and samples/s weighted by step time (all samples over all seconds)."""
    steady = [r for r in steps if r["step"] >= STEADY_FROM] or steps
    mean = lambda key: statistics.mean(r.get(key, 0.0) for r in steady)  # noqa: E731
    return {
        "step_s": mean("time/step_s"), "rollout_s": mean("time/rollout_s"), "reward_s": mean("time/reward_s"),
        "train_s": mean("time/train_s"), "sync_s": mean("time/sync_s"),
        "samples_per_s": sum(r["perf/samples_per_s"] * r["time/step_s"] for r in steady) /
        sum(r["time/step_s"] for r in steady),
        "steady": steady,
    }
