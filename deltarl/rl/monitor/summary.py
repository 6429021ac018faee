"""A run at a glance: windowed means of the step metrics and the evaluations, as markdown.

`python run_rl.py summary RUN_DIR [WINDOW]` prints it; results pages under benchmarks/results/ quote it,
so every number on them comes from the run's own metrics.jsonl.
"""
from statistics import mean

from .loggers import read_metrics

# (metric, column title, format) of the step table
STEP_COLUMNS = [
    ("reward/mean", "reward", "{:.3f}"),
    ("actor/entropy", "entropy", "{:.3f}"),
    ("response/length_mean", "length", "{:.2f}"),
    ("actor/kl", "KL to ref", "{:.4f}"),
    ("actor/rollout_kl", "rollout-learner KL", "{:.1e}"),
    ("time/step_s", "step s", "{:.2f}"),
    ("time/rollout_s", "rollout s", "{:.2f}"),
    ("time/reward_s", "reward s", "{:.2f}"),
    ("time/offload_s", "offload s", "{:.2f}"),
    ("time/train_s", "train s", "{:.2f}"),
    ("time/sync_s", "sync s", "{:.3f}"),
    ("perf/rollout_tokens_per_s", "rollout tok/s", "{:,.0f}"),
    ("perf/train_tokens_per_s", "train tok/s", "{:,.0f}"),
    ("perf/samples_per_s", "samples/s", "{:.1f}"),
    ("async/staleness_mean", "staleness", "{:.2f}"),
]


def _windows(records: list[dict], window: int) -> list[list[dict]]:
    return [records[i:i + window] for i in range(0, len(records), window)]


def _cell(rows: list[dict], key: str, fmt: str) -> str:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return fmt.format(mean(values)) if values else ""


def summarize_run(run_dir, window: int = 10) -> str:
    """Markdown: one row per `window` training steps (means), then the held-out evaluations."""
    records = read_metrics(run_dir)
    steps = [r for r in records if "reward/mean" in r]
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    columns = [c for c in STEP_COLUMNS if any(c[0] in r for r in steps)]
    lines = [f"Training steps ({len(steps)}), means over windows of {window}:", "",
             "| steps | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for rows in _windows(steps, window):
        span = f"{rows[0]['step']}-{rows[-1]['step']}"
        lines.append(f"| {span} | " + " | ".join(_cell(rows, key, fmt) for key, _, fmt in columns) + " |")
    if evals:
        keys = sorted({k for r in evals for k in r if k.startswith("eval/")})
        lines += ["", "Held-out evaluations:", "", "| step | " + " | ".join(k[5:] for k in keys) + " |",
                  "|---:|" + "---:|" * len(keys)]
        lines += [f"| {r['step']} | " + " | ".join(f"{r[k]:.3f}" if k in r else "" for k in keys) + " |"
                  for r in evals]
    if len(steps) > 1 and "wall_time" in steps[0]:
        wall = steps[-1]["wall_time"] - steps[0]["wall_time"]
        lines += ["", f"Wall time from step {steps[0]['step']} to step {steps[-1]['step']}: {wall:.0f} s "
                  "(evaluations included)."]
    return "\n".join(lines) + "\n"
