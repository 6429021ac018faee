"""PNG training curves of a run, from its metrics.jsonl: `python run_rl.py plot RUN_DIR`.

    paths = plot_run("runs/arith")   # runs/arith/plots/{reward,entropy,length,eval,curves}.png

One PNG per panel, each drawn only when its metrics were logged, and curves.png with every drawn
panel in a grid. Noisy per-step series are drawn faint with a smoothed line on top (the debiased
exponential moving average TensorBoard uses, its weight set by the series length); eval points,
logged every few steps, are not smoothed.
matplotlib is used through its object API with the Agg canvas, so no display and no global state.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .loggers import read_metrics

logger = logging.getLogger(__name__)

PLOTS_DIR = "plots"
_REWARD_STATS = {"mean", "total", "std", "min", "max"}


@dataclass
class Panel:
    """One chart: the file stem, title, and the (metric key, legend label) series it draws."""
    name: str
    title: str
    ylabel: str
    series: list[tuple[str, str]] = field(default_factory=list)
    band: tuple[str, str] | None = None     # (mean key, std key): a shaded mean ± std
    smooth: bool = True


def _first(keys: set[str], *candidates: str) -> str | None:
    return next((k for k in candidates if k in keys), None)


def panels_for(keys: set[str]) -> list[Panel]:
    """The panels that `keys` (every metric name of a run) can fill, in a fixed order."""
    panels = []
    reward = _first(keys, "reward/mean", "reward/total")
    parts = {}
    for key in sorted(keys):
        m = re.fullmatch(r"reward/([^/]+)/mean", key) or re.fullmatch(r"reward/([^/]+)", key)
        if m and m[1] not in _REWARD_STATS:
            parts.setdefault(m[1], key)     # "reward/x/mean" sorts before "reward/x": it wins
    series = ([(reward, "total")] if reward else []) + [(k, name) for name, k in parts.items()]
    if series:
        band = (reward, "reward/std") if reward and "reward/std" in keys else None
        panels.append(Panel("reward", "Reward", "reward", series, band))
    entropy = _first(keys, "actor/entropy", "actor/entropy_mean")
    if entropy:
        panels.append(Panel("entropy", "Policy entropy", "nats / token", [(entropy, "entropy")]))
    length = [(k, label) for k, label in
              ((_first(keys, "response/length_mean", "response/length/mean"), "mean"),
               (_first(keys, "response/length_max", "response/length/max"), "max")) if k]
    if length:
        panels.append(Panel("length", "Response length", "tokens", length))
    evals = [(k, k.removeprefix("eval/")) for k in sorted(keys)
             if k.startswith("eval/") and any(w in k for w in ("acc", "pass", "reward"))]
    if evals:
        panels.append(Panel("eval", "Evaluation", "score", evals, smooth=False))
    return panels


def auto_weight(n: int) -> float:
    """A smoothing weight for n points: an EMA spanning about n/25 steps (none below 50 points,
    0.95 for 1000), so short runs are not flattened and long ones are readable."""
    span = max(1, n // 25)
    return 1 - 2 / (span + 1)


def smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so it starts at the data."""
    out, last = [], 0.0
    for i, v in enumerate(values, 1):
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** i))
    return out


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) where `key` has a finite value; nulls (NaN when logged) are gaps."""
    pairs = [(r["step"], r[key]) for r in records
             if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def _draw(ax, panel: Panel, records: list[dict], smoothing: float | None):
    colors = [f"C{i}" for i in range(10)]
    for (key, label), color in zip(panel.series, colors * 10):
        steps, values = _series(records, key)
        if not steps:
            continue
        if not panel.smooth:
            ax.plot(steps, values, "o-", color=color, label=label, markersize=3)
            continue
        if panel.band and key == panel.band[0]:
            std = dict(zip(*_series(records, panel.band[1])))
            low = [v - std.get(s, 0.0) for s, v in zip(steps, values)]
            high = [v + std.get(s, 0.0) for s, v in zip(steps, values)]
            ax.fill_between(steps, low, high, color=color, alpha=0.12, linewidth=0)
        weight = auto_weight(len(values)) if smoothing is None else smoothing
        if weight > 0 and len(values) >= 3:
            ax.plot(steps, values, color=color, alpha=0.3, linewidth=1)
            ax.plot(steps, smooth(values, weight), color=color, label=label, linewidth=1.8)
        else:
            ax.plot(steps, values, color=color, label=label, linewidth=1.8)
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)
    if len(panel.series) > 1:
        ax.legend(fontsize=8)


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    return path


def plot_run(run_dir, out_dir=None, smoothing: float | None = None) -> list[Path]:
    """Write the PNGs of a run (see module docstring) into `out_dir` (default RUN_DIR/plots) and
    return their paths: the panels in order reward, entropy, length, eval (those with data), then
    curves.png. `smoothing` is the EMA weight in [0, 1) (0: raw only; None: by series length).
    A run with none of these metrics gives [] and a log line."""
    from matplotlib.figure import Figure

    if smoothing is not None and not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    run_dir = Path(run_dir)
    run_dir = run_dir.parent if run_dir.is_file() else run_dir     # metrics.jsonl given directly
    records = read_metrics(run_dir)
    keys = {k for r in records for k in r}
    panels = panels_for(keys)
    if not panels:
        logger.warning("%s: no reward, entropy, length or eval metrics to plot", run_dir)
        return []
    out = Path(out_dir) if out_dir is not None else run_dir / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    title = run_dir.resolve().name
    paths = []
    for panel in panels:
        fig = Figure(figsize=(6.4, 4.0), layout="constrained")
        _draw(fig.add_subplot(), panel, records, smoothing)
        fig.suptitle(title, fontsize=9)
        paths.append(_save(fig, out / f"{panel.name}.png"))
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(6.4 * cols, 3.8 * rows), layout="constrained")
    for i, panel in enumerate(panels, 1):
        _draw(fig.add_subplot(rows, cols, i), panel, records, smoothing)
    fig.suptitle(title)
    paths.append(_save(fig, out / "curves.png"))
    return paths
