"""Kill the rollout engine's processes mid-run and measure what it costs: the run goes on, the time lost.

Starts `run_rl.py` (by default `configs/gpu_single.yaml`: vLLM colocated with the DeepSpeed learner), waits
until `--kill-after` steps are logged, then SIGKILLs the rollout actor (`ray::RolloutWorker...`) and every
process under it (vLLM's engine core), as when a node's OOM killer or a driver crash takes the engine.
The driver replaces the engine, reloads the current weights and redoes the step's generation
(`deltarl.rl.engines`). Reported: whether the run completed, the events it recorded, the step that
absorbed the failure, and the time lost = that step's time minus the median of the others.

    PYTHONPATH=/tmp/site:. python3 benchmarks/engine_kill.py --out $OUT [overrides ...]
Writes engine_kill_<device>.md under --out and benchmarks/results/.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import write_results  # noqa: E402


def engine_processes(root_pid: int) -> list[psutil.Process]:
    """The rollout actor's process under `root_pid` and its own descendants."""
    for child in psutil.Process(root_pid).children(recursive=True):
        try:
            if " ".join(child.cmdline()).startswith("ray::RolloutWorker"):
                return [child, *child.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return []


def records(run_dir: Path, name: str) -> list[dict]:
    path = run_dir / name
    return [json.loads(line) for line in path.open()] if path.exists() else []


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/gpu_single.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--kill-after", type=int, default=10)
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop the run with SIGINT (it checkpoints and exits) after this many seconds, "
                             "so a slow machine still gets a report of the steps it made")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = Path(args.out)
    runs = Path("/tmp/engine_kill_runs")
    command = [sys.executable, "run_rl.py", "--config", args.config, f"run.steps={args.steps}", "run.eval_every=0",
               "run.save_every=10", "run.progress_bar=false", f"run.output_dir={runs}", *args.overrides]
    print(" ".join(command), flush=True)
    with open(out / "run.log", "w") as log:
        run = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    killed, kill_time, step_at_kill = [], None, None
    deadline, interrupted = time.time() + (args.budget_s or float("inf")), False
    while run.poll() is None:
        if not interrupted and time.time() > deadline:
            print(f"budget of {args.budget_s:.0f} s spent: stopping the run with SIGINT", flush=True)
            run.send_signal(signal.SIGINT)           # the driver checkpoints and shuts Ray down
            interrupted = True
        run_dirs = list(runs.glob("*/metrics.jsonl"))
        logged = records(run_dirs[0].parent, "metrics.jsonl") if run_dirs else []
        if not killed and len([r for r in logged if r["step"] > 0]) >= args.kill_after:
            victims = engine_processes(run.pid)
            for p in victims:
                try:
                    p.send_signal(signal.SIGKILL)
                    killed.append(f"{p.pid} {' '.join(p.cmdline())[:60].strip()}")
                except psutil.NoSuchProcess:
                    pass
            kill_time, step_at_kill = time.time(), max(r["step"] for r in logged)
            print(f"killed after step {step_at_kill}: {killed}", flush=True)
        time.sleep(0.1)
    code = run.returncode
    run_dir = next(runs.glob("*/metrics.jsonl")).parent
    metrics = [r for r in records(run_dir, "metrics.jsonl") if "time/step_s" in r]
    events = records(run_dir, "events.jsonl")
    steps = sorted(r["step"] for r in metrics)
    hit = next((r for r in metrics if r["step"] == step_at_kill + 1), None) if step_at_kill is not None else None
    others = [r["time/step_s"] for r in metrics if hit is None or r["step"] != hit["step"]]
    median = statistics.median(others) if others else float("nan")
    device = _device()
    lines = [f"# A rollout engine killed mid-run ({device})", "",
             "| run | exit | steps logged (each once?) | killed after step | processes killed | step that absorbed it "
             "| its time s | median step s | time lost s |", "|---|---:|---|---:|---:|---:|---:|---:|---:|",
             f"| `{args.config}` {' '.join(args.overrides)} | {code} | {len(steps)} of {args.steps} "
             f"({'yes' if steps == list(range(1, args.steps + 1)) else 'no'}) | {step_at_kill} | {len(killed)} | "
             f"{hit['step'] if hit else '-'} | {hit['time/step_s']:.2f} | {median:.2f} | "
             f"{hit['time/step_s'] - median:.2f} |" if hit else "| (no step completed after a kill) |", "",
             *([f"The run was stopped by SIGINT when the {args.budget_s:.0f} s budget was spent.", ""]
               if interrupted else []),
             "Events the run recorded (`events.jsonl`):", ""]
    lines += [f"- {e['event']}: {e['message']}" for e in events] or ["- none"]
    lines += ["", "Processes killed (pid, title): " + "; ".join(killed),
              f"Kill at {time.strftime('%H:%M:%S', time.gmtime(kill_time)) if kill_time else '-'} UTC; the run "
              f"directory's metrics and config are beside this file when run through the device tool."]
    text = "\n".join(lines) + "\n"
    print(text)
    slug = device.replace(" ", "_")
    write_results(f"engine_kill_{slug}.md", text, [out, ROOT / "benchmarks" / "results"])
    (out / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text())
    return 0 if code == 0 and hit else 1


def _device() -> str:
    try:
        import torch
        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except Exception:                                    # noqa: BLE001
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
