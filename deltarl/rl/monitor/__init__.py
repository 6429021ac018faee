"""rl.monitor: what the trainer records every step, and how a run is looked at afterwards.

    from deltarl.rl.monitor import Monitor, progress, plot_run, read_metrics

- `Monitor(run_dir, cfg.run.log, cfg.run.name, config_to_dict(cfg))`: `log(step, metrics)` to
  metrics.jsonl, TensorBoard, and W&B / MLflow when enabled and installed; `close()`.
- `read_metrics(run_dir)`: the metrics.jsonl records, one per step (a cut-off last line is skipped).
- `plot_run(run_dir, out_dir=None)`: PNG curves (reward, entropy, length, eval, all in curves.png).
- `summarize_run(run_dir, window=10)`: markdown of windowed step means and the evaluations.
- `progress(total, enabled)`: the console bar, `update(metrics)` once per step, `close()`.

Metric names and files are listed in docs/monitoring.md.
"""
from .loggers import METRICS_FILE, TENSORBOARD_DIR, Monitor, MonitorWarning, read_metrics
from .plots import PLOTS_DIR, auto_weight, panels_for, plot_run, smooth
from .progress import Progress, format_postfix, progress
from .summary import summarize_run

__all__ = ["METRICS_FILE", "TENSORBOARD_DIR", "PLOTS_DIR", "Monitor", "MonitorWarning", "read_metrics",
           "plot_run", "panels_for", "smooth", "auto_weight", "Progress", "progress", "format_postfix", "summarize_run"]
