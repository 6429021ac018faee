"""The same RL job on 1, 2, 4 (and 8) GPUs of one node, colocated and split: how far deltarl scales.

Weak scaling: every cell keeps the work per GPU fixed (`--prompts-per-gpu` prompts a step per GPU, the
config's `rollout.n` samples each), so ideal samples/s grows with the GPU count n. Per cell, from
run_rl.py's metrics.jsonl over the steady steps (step 3 on): the step's time split (rollout, reward, train,
weight sync), rollout and train tokens/s, samples/s, the learner ranks' GPU memory high-water mark, and the
scaling efficiency samples/s(n) / (n * samples/s(1)) of the same placement.

Placements: `colocated` puts engine i and learner rank i on GPU i (n engines, n ranks; the engines sleep
while the learner trains); `split` gives n/2 GPUs to engines and n/2 to learner ranks (on 1 GPU: half a GPU
each, both running at once).

    PYTHONPATH=/tmp/site:. python3 benchmarks/scaling.py --gpus 1,2,4,8 --placements colocated,split
    python benchmarks/scaling.py --cpu-smoke      # the script end to end here: tiny model, 1 and 2 gloo ranks

writes benchmarks/results/scaling_<device>.md (the current table first, earlier ones kept below it), a PNG
of samples/s against GPUs, and each cell's metrics under benchmarks/results/scaling_<device>/.
"""
import argparse
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.runs import STEADY_FROM, run_job, steady_means, step_records  # noqa: E402


@dataclass
class Cell:
    """One run: a placement on `gpus` GPUs with its engine and learner-rank counts."""
    placement: str
    gpus: int
    engines: int
    ranks: int
    prompts: int           # prompts per step

    @property
    def name(self) -> str:
        return f"{self.placement}_{self.gpus}gpu"


def plan_cell(placement: str, gpus: int, prompts_per_gpu: int, cpu: bool) -> Cell:
    """The engine and rank counts of a placement on `gpus` GPUs (on the CPU smoke: one engine, a rank per
    'GPU')."""
    if cpu:
        return Cell(placement, gpus, 1, gpus, prompts_per_gpu * gpus)
    if placement == "colocated":
        return Cell(placement, gpus, gpus, gpus, prompts_per_gpu * gpus)
    if placement == "split":
        half = max(1, gpus // 2)
        return Cell(placement, gpus, half, half, prompts_per_gpu * gpus)
    raise SystemExit(f"unknown placement {placement!r}: colocated or split")


def overrides_of(cell: Cell, cpu: bool) -> list[str]:
    """run_rl.py overrides that make the config this cell."""
    out = [f"ray.placement={cell.placement}", f"rollout.num_workers={cell.engines}",
           f"learner.num_workers={cell.ranks}", f"rollout.prompts_per_step={cell.prompts}"]
    if not cpu and cell.placement == "split":
        share = 0.5 if cell.gpus == 1 else 1
        out += [f"rollout.gpus_per_worker={share}", f"learner.gpus_per_worker={share}"]
    return out


def run(config: str, cell: Cell, steps: int, extra: list[str], runs: Path, cpu: bool, timeout: float) -> Path:
    settings = [f"run.steps={steps}", "run.save_every=0", "run.eval_every=0", "run.progress_bar=false",
                f"run.output_dir={runs / cell.name}"]
    return run_job(config, settings + overrides_of(cell, cpu) + extra, runs / f"{cell.name}.log", timeout)


def summarize(metrics: Path) -> dict:
    """Steady-state means of one run's step records, its token rates, peak learner memory and reward curve."""
    steps = step_records(metrics)
    summary = steady_means(steps)
    steady = summary.pop("steady")
    mean = lambda key: statistics.mean(r.get(key, 0.0) for r in steady)  # noqa: E731
    return summary | {
        "steps": len(steps), "rollout_tok_s": mean("perf/rollout_tokens_per_s"),
        "train_tok_s": mean("perf/train_tokens_per_s"),
        "peak_gib": max((r.get("perf/learner_peak_gib", float("nan")) for r in steady), default=float("nan")),
        "reward": [(r["step"], r["reward/mean"]) for r in steps],
    }


def efficiency(results: dict[str, tuple[Cell, dict]]) -> dict[str, float]:
    """samples/s(n) / (n * samples/s(smallest n)) per cell, against the same placement's smallest run."""
    out = {}
    for name, (cell, r) in results.items():
        same = [(c, s) for c, s in results.values() if c.placement == cell.placement]
        base_cell, base = min(same, key=lambda cs: cs[0].gpus)
        per_gpu = base["samples_per_s"] / base_cell.gpus
        out[name] = r["samples_per_s"] / (cell.gpus * per_gpu)
    return out


def table(results: dict[str, tuple[Cell, dict]], device: str, config: str, extra: list[str], steps: int,
          failures: list[str]) -> str:
    eff = efficiency(results)
    lines = [f"## {time.strftime('%Y-%m-%d %H:%M')} UTC, {device}", "",
             f"`{config}` {' '.join(extra)}, {steps} steps per cell; steady state = steps {STEADY_FROM}-{steps}; "
             "means per step. Efficiency: samples/s over (GPUs x samples/s per GPU of the same placement's "
             "smallest run).", "",
             "| placement | GPUs | engines | learner ranks | samples/step | step s | rollout s | reward s | train s "
             "| sync s | rollout tok/s | train tok/s | samples/s | efficiency | learner peak GiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (c, r) in sorted(results.items(), key=lambda kv: (kv[1][0].placement, kv[1][0].gpus)):
        lines.append(f"| {c.placement} | {c.gpus} | {c.engines} | {c.ranks} | {r['samples']} | {r['step_s']:.2f} "
                     f"| {r['rollout_s']:.2f} | {r['reward_s']:.2f} | {r['train_s']:.2f} | {r['sync_s']:.2f} "
                     f"| {r['rollout_tok_s']:.0f} | {r['train_tok_s']:.0f} | {r['samples_per_s']:.1f} "
                     f"| {eff[name]:.2f} | {r['peak_gib']:.1f} |")
    lines += ["", *(f"- **failed**: {f}" for f in failures)]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, tuple[Cell, dict]], path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for placement in sorted({c.placement for c, _ in results.values()}):
        cells = sorted((c.gpus, r["samples_per_s"]) for c, r in results.values() if c.placement == placement)
        gpus, rates = zip(*cells)
        ax.plot(gpus, rates, marker="o", label=placement)
        ax.plot(gpus, [rates[0] / gpus[0] * g for g in gpus], linestyle=":", color=ax.lines[-1].get_color(),
                label=f"{placement}, linear")
    ax.set(xlabel="GPUs", ylabel="samples/s", title="RL samples/s against GPUs (weak scaling)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(path: Path, section: str):
    """The new section first, the earlier ones (history) below it."""
    title = f"# RL scaling on one node ({path.stem.removeprefix('scaling_')})\n\n"
    old = path.read_text().removeprefix(title) if path.exists() else ""
    path.write_text(title + section + ("\n" + old if old else ""))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/scaling_gpu.yaml")
    p.add_argument("--gpus", default="1,2,4,8", help="GPU counts, comma-separated")
    p.add_argument("--placements", default="colocated,split")
    p.add_argument("--prompts-per-gpu", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--timeout-s", type=float, default=900, help="per cell")
    p.add_argument("--runs", default="/tmp/scaling_runs")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="configs/tiny_cpu.yaml, 1 and 2 gloo learner ranks, one engine; printed, not written")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cpu = args.cpu_smoke
    config = "configs/tiny_cpu.yaml" if cpu else args.config
    gpu_counts = [1, 2] if cpu else [int(g) for g in args.gpus.split(",")]
    placements = ["colocated"] if cpu else args.placements.split(",")
    extra = (["learner.threads=1", "rollout.n=4", "ray.num_cpus=4"] if cpu else []) + args.overrides
    device = "cpu" if cpu else _device()
    runs = Path(args.runs)
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    keep = ROOT / "benchmarks" / "results" / f"scaling_{device.replace(' ', '_')}"
    results, failures = {}, []
    for placement in placements:
        for gpus in gpu_counts:
            cell = plan_cell(placement, gpus, args.prompts_per_gpu if not cpu else 4, cpu)
            try:
                run_dir = run(config, cell, args.steps, extra, runs, cpu, args.timeout_s)
            except (RuntimeError, subprocess.TimeoutExpired) as error:      # the other cells still run
                failures.append(f"{cell.name}: {str(error)[:400]}")
                print(failures[-1], flush=True)
                continue
            summary = summarize(run_dir / "metrics.jsonl")
            summary["samples"] = cell.prompts * _samples_per_prompt(run_dir)
            results[cell.name] = (cell, summary)
            if not cpu:
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(run_dir / "metrics.jsonl", keep / f"metrics_{cell.name}.jsonl")
                shutil.copy(run_dir / "config.yaml", keep / f"config_{cell.name}.yaml")
    if not results:
        raise SystemExit("no cell ran:\n" + "\n".join(failures))
    section = table(results, device, config, extra, args.steps, failures)
    print(section)
    if not cpu:
        plot(results, keep / "samples_per_s.png")
        write(keep.with_suffix(".md"), section)
        print(f"wrote {keep.with_suffix('.md')}")
    return 1 if failures else 0


def _samples_per_prompt(run_dir: Path) -> int:
    import yaml
    return int(yaml.safe_load((run_dir / "config.yaml").read_text())["rollout"]["n"])


def _device() -> str:
    import torch
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    sys.exit(main())
