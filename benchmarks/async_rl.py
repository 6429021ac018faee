"""Asynchronous RL against the synchronous loop: the same job at algorithm.max_staleness 0, 1, 2 ...

Each setting runs `run_rl.py` with the same config, seeds and steps. From each run's metrics.jsonl:
samples/s over the steady steps (step 3 on: the first rounds pay start-up and fill the pipeline), the
synchronous run's step split (waiting for rollouts vs the rest: rewards, the learner's step, the weight
sync) and the ideal overlap bound it allows, S / max(R, S - R) for a synchronous step of S seconds of
which R wait for rollouts; the reward and held-out accuracy reached after the same samples.

    python benchmarks/async_rl.py --config configs/tiny_cpu.yaml --staleness 0 1 2 --steps 40 \\
        --name cpu ray.placement=split learner.threads=1

writes benchmarks/results/async_<name>.md (the current table first, earlier ones kept below it), a PNG
of reward against samples and held-out accuracy against wall-clock, and each run's metrics under
benchmarks/results/async_<name>/.
"""
import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.runs import STEADY_FROM, run_job, steady_means, step_records  # noqa: E402


def run(config: str, staleness: int, steps: int, overrides: list[str], runs: Path) -> Path:
    settings = [f"run.steps={steps}", "run.save_every=0", "run.progress_bar=false",
                f"run.output_dir={runs / f'staleness{staleness}'}", f"algorithm.max_staleness={staleness}"]
    try:
        return run_job(config, settings + overrides, runs / f"staleness{staleness}.log")
    except RuntimeError as error:
        raise SystemExit(f"staleness {staleness}: {error}")


def summarize(metrics: Path) -> dict:
    """Steady-state speed of one run, its reward curve against samples and its evals against wall-clock."""
    records = [json.loads(line) for line in metrics.open()]
    steps = step_records(metrics)
    evals = sorted((r for r in records if "eval/greedy_accuracy" in r), key=lambda r: r["step"])
    summary = steady_means(steps)
    steady = summary.pop("steady")
    samples = [r["perf/samples_per_s"] * r["time/step_s"] for r in steps]
    clock, elapsed = {0: 0.0}, 0.0
    for r in steps:
        elapsed += r["time/step_s"]
        clock[r["step"]] = elapsed
    mean = lambda key: statistics.mean(r.get(key, 0.0) for r in steady)  # noqa: E731
    return summary | {
        "staleness": mean("async/staleness_mean"), "partial": mean("async/partial_samples_frac"),
        "probs_diff": mean("actor/rollout_probs_diff_mean"),
        "reward_last": statistics.mean(r["reward/mean"] for r in steps[-max(1, len(steps) // 4):]),
        "curve": [(sum(samples[: i + 1]), r["reward/mean"]) for i, r in enumerate(steps)],
        "evals": [(clock.get(r["step"], 0.0), r["step"], r["eval/greedy_accuracy"]) for r in evals],
    }


def table(results: dict[int, dict], device: str, config: str, overrides: list[str], steps: int) -> str:
    base = results[min(results)]
    S, R = base["step_s"], base["rollout_s"]
    bound = S / max(R, S - R)
    lines = [f"## {time.strftime('%Y-%m-%d %H:%M')} UTC, {device}", "",
             f"`{config}` {' '.join(overrides)}, {steps} steps per run; steady state = steps {STEADY_FROM}-{steps}. "
             f"Synchronous step {S:.2f} s, of which {R:.2f} s waiting for rollouts: ideal overlap bound "
             f"S / max(R, S - R) = **{bound:.2f}x**.", "",
             "| max_staleness | samples/s | speed-up | share of bound | step s | rollout wait s | reward s | train s "
             "| sync s | staleness (versions) | partial samples | rollout-learner prob diff | reward, last quarter "
             "| held-out greedy (step: acc) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for k, r in sorted(results.items()):
        speedup = r["samples_per_s"] / base["samples_per_s"]
        evals = ", ".join(f"{s}: {a:.3f}" for _, s, a in r["evals"])
        lines.append(f"| {k} | {r['samples_per_s']:.1f} | {speedup:.2f}x | {speedup / bound:.0%} | {r['step_s']:.2f} "
                     f"| {r['rollout_s']:.2f} | {r['reward_s']:.2f} | {r['train_s']:.2f} | {r['sync_s']:.2f} "
                     f"| {r['staleness']:.2f} | {r['partial']:.2f} | {r['probs_diff']:.1e} | {r['reward_last']:.3f} "
                     f"| {evals} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[int, dict], path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for k, r in sorted(results.items()):
        xs, ys = zip(*r["curve"])
        window = max(1, len(ys) // 10)
        smooth = [statistics.mean(ys[max(0, i - window + 1): i + 1]) for i in range(len(ys))]
        left.plot(xs, smooth, label=f"max_staleness {k}")
        if r["evals"]:
            clock, _, acc = zip(*r["evals"])
            right.plot([c / 60 for c in clock], acc, marker="o", label=f"max_staleness {k}")
    left.set(xlabel="samples trained on", ylabel="reward (moving mean)", title="reward vs samples")
    right.set(xlabel="wall-clock minutes (sum of step times)", ylabel="held-out greedy accuracy",
              title="held-out accuracy vs time")
    left.legend(), right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--name", required=True, help="results name: async_<name>.md (e.g. cpu, or the GPU's name)")
    p.add_argument("--runs", default="/tmp/async_runs")
    p.add_argument("--reuse", help="folder of metrics_staleness<k>.jsonl: tabulate those runs instead of running")
    p.add_argument("--budget-s", type=float, default=0, help="skip a setting that would end past this (0: none)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    runs = Path(args.runs)
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    folder = ROOT / "benchmarks" / "results"
    keep = folder / f"async_{args.name}"
    keep.mkdir(exist_ok=True)
    results, start, longest = {}, time.time(), 0.0
    for k in args.staleness:
        if args.reuse:                 # the table again from runs made earlier (e.g. in separate device calls)
            results[k] = summarize(Path(args.reuse) / f"metrics_staleness{k}.jsonl")
            continue
        if args.budget_s and time.time() - start + longest > args.budget_s:
            print(f"max_staleness {k} skipped: another run would pass --budget-s {args.budget_s}", flush=True)
            continue
        t0 = time.time()
        run_dir = run(args.config, k, args.steps, args.overrides, runs)
        shutil.copy(run_dir / "metrics.jsonl", keep / f"metrics_staleness{k}.jsonl")
        shutil.copy(run_dir / "config.yaml", keep / f"config_staleness{k}.yaml")
        results[k] = summarize(keep / f"metrics_staleness{k}.jsonl")
        longest = max(longest, time.time() - t0)
    device = args.name.replace("_", " ")
    text = table(results, device, args.config, args.overrides, args.steps)
    print(text)
    out = folder / f"async_{args.name}.md"
    history = out.read_text().split("\n", 2)[2] if out.exists() else ""
    out.write_text(f"# Asynchronous RL vs the synchronous loop ({device})\n\n{text}\n{history}")
    plot(results, keep / "curves.png")
    print(f"wrote {out} and {keep}/")


if __name__ == "__main__":
    main()
