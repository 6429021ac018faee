"""Where the trainer's per-step metrics go: metrics.jsonl, TensorBoard, and optionally W&B / MLflow.

    mon = Monitor(run_dir, cfg.run.log, cfg.run.name, config_to_dict(cfg))
    mon.log(step, {"reward/mean": 0.4, "actor/entropy": 1.2, "time/step_s": 3.1})
    mon.close()

Each destination is a "sink" with log(step, scalars) and close(). A sink that cannot start (its
package is missing, no W&B login) or that fails later is dropped with one warning; the run goes on,
because losing a dashboard must never lose a training run. metrics.jsonl is the record of truth:
one JSON object per log() call, flushed at once, so a killed run keeps every finished step.
"""
from __future__ import annotations

import json
import math
import secrets
import time
import warnings
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MonitorWarning(UserWarning):
    """A logging destination was skipped or dropped; training continues."""


def _option(log_cfg, key: str, default):
    """A field of run.log, given as the LogConfig dataclass, a dict, or None (the defaults)."""
    if log_cfg is None:
        return default
    if isinstance(log_cfg, dict):
        return log_cfg.get(key, default)
    return getattr(log_cfg, key, default)


# --- sinks --------------------------------------------------------------------------------------

class _JsonlSink:
    """Appends one line per step: {"step": 3, "wall_time": ..., "reward/mean": 0.41, ...}.
    Non-finite values are written as null (strict JSON that any tool can read)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / METRICS_FILE
        self.file = open(self.path, "a", encoding="utf-8")

    def rewind(self, step: int):
        """Drop the records of steps after `step` (they are about to be redone): the file is rewritten
        without them, atomically, so it keeps one record per step."""
        self.file.close()
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True)
                if line.strip() and json.loads(line)["step"] <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(self.path)
        self.file = open(self.path, "a", encoding="utf-8")

    def log(self, step: int, scalars: dict[str, float]):
        record = {"step": step, "wall_time": round(time.time(), 3)}
        record.update({k: (v if math.isfinite(v) else None) for k, v in scalars.items()})
        self.file.write(json.dumps(record, allow_nan=False) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()


class _TensorBoardSink:
    """Scalars in run_dir/tensorboard, written with tensorboard's own event writer (no torch).

    `purge_step`: when a run resumes at that step, TensorBoard hides what the earlier run logged at
    steps >= purge_step, so the curves do not double back (as SummaryWriter(purge_step=...))."""

    def __init__(self, run_dir: Path, purge_step: int | None):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        self.event_pb2, self.summary_pb2 = event_pb2, summary_pb2
        self.writer = EventFileWriter(str(run_dir / TENSORBOARD_DIR), flush_secs=10)
        if purge_step is not None:
            self.rewind(purge_step - 1)

    def rewind(self, step: int):
        """TensorBoard hides what was logged at steps after `step` (a session START event at step + 1)."""
        self.writer.add_event(self.event_pb2.Event(
            step=step + 1, wall_time=time.time(),
            session_log=self.event_pb2.SessionLog(status=self.event_pb2.SessionLog.START)))

    def log(self, step: int, scalars: dict[str, float]):
        values = [self.summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]
        self.writer.add_event(self.event_pb2.Event(
            step=step, wall_time=time.time(), summary=self.summary_pb2.Summary(value=values)))

    def close(self):
        self.writer.close()


class _WandbSink:
    """A W&B run; its id is kept in run_dir/wandb_id so a resumed run continues the same chart.
    The id is ours (8 hex digits), not wandb's internal helper, which newer releases removed."""

    def __init__(self, run_dir: Path, project: str, run_name: str, config: dict | None):
        import wandb
        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id)
        self.run = wandb.init(project=project, name=run_name, id=run_id, resume="allow",
                              dir=str(run_dir), config=config or {})

    def log(self, step: int, scalars: dict[str, float]):
        self.run.log(scalars, step=step)

    def close(self):
        self.run.finish()


class _MlflowSink:
    """An MLflow run in experiment `project` (tracking URI from MLFLOW_TRACKING_URI, else MLflow's
    default: ./mlflow.db, a SQLite store, in MLflow 3);
    its id is kept in run_dir/mlflow_run_id so a resumed run continues it."""

    def __init__(self, run_dir: Path, project: str, run_name: str, config: dict | None):
        import mlflow
        self.mlflow = mlflow
        id_file = run_dir / "mlflow_run_id"
        mlflow.set_experiment(project)
        if id_file.exists():
            self.run = mlflow.start_run(run_id=id_file.read_text().strip())
        else:
            self.run = mlflow.start_run(run_name=run_name)
            id_file.write_text(self.run.info.run_id)
            if config:
                mlflow.log_params({k: str(v)[:500] for k, v in _flatten(config).items()})

    def log(self, step: int, scalars: dict[str, float]):
        self.mlflow.log_metrics({k: v for k, v in scalars.items() if math.isfinite(v)}, step=step)

    def close(self):
        self.mlflow.end_run()


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{"rollout": {"n": 8}} -> {"rollout.n": 8}, for MLflow's flat parameters."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


# --- the monitor --------------------------------------------------------------------------------

class Monitor:
    """Logs a dict of scalar metrics per step to every enabled destination (see module docstring).

    `log_cfg` is `config.run.log` (a LogConfig, a dict, or None for the defaults: JSONL and
    TensorBoard on). `config` is the resolved config as a dict, recorded by W&B and MLflow.
    Use it in the driver process only.
    """

    def __init__(self, run_dir, log_cfg=None, run_name: str | None = None, config: dict | None = None,
                 *, purge_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_name = run_name or self.run_dir.name
        project = _option(log_cfg, "project", "deltarl")
        run_dir, run_name = self.run_dir, self.run_name
        wanted = [
            ("jsonl", lambda: _JsonlSink(run_dir), ""),
            ("tensorboard", lambda: _TensorBoardSink(run_dir, purge_step), "pip install tensorboard"),
            ("wandb", lambda: _WandbSink(run_dir, project, run_name, config), "pip install wandb"),
            ("mlflow", lambda: _MlflowSink(run_dir, project, run_name, config), "pip install mlflow"),
        ]
        defaults = {"jsonl": True, "tensorboard": True, "wandb": False, "mlflow": False}
        self.sinks: dict[str, object] = {}
        for name, start, install in wanted:
            if _option(log_cfg, name, defaults[name]):
                self._start(name, start, install)
        self._skipped_keys: set[str] = set()

    def _start(self, name: str, start, install: str):
        try:
            self.sinks[name] = start()
        except ImportError as e:
            _warn(f"run.log.{name} is on but {e.name or name} is not installed ({install}); "
                  f"logging without it")
        except Exception as e:  # noqa: BLE001 - e.g. no W&B login: the run goes on without it
            _warn(f"run.log.{name}: could not start ({type(e).__name__}: {e}); logging without it")

    def log(self, step: int, metrics: dict) -> None:
        """Record `metrics` ({"reward/mean": 0.4, ...}) at `step`. Values may be Python or numpy
        numbers or 0-d tensors; None is skipped; anything else is skipped with one warning."""
        scalars = {}
        for key, value in metrics.items():
            if value is None:
                continue
            try:
                scalars[str(key)] = float(value)
            except (TypeError, ValueError):
                if key not in self._skipped_keys:
                    self._skipped_keys.add(key)
                    _warn(f"metric {key!r} is not a number ({type(value).__name__}); not logged")
        for name, sink in list(self.sinks.items()):
            try:
                sink.log(int(step), scalars)
            except Exception as e:  # noqa: BLE001 - a failing dashboard must not stop training
                _warn(f"run.log.{name}: logging failed ({type(e).__name__}: {e}); dropped")
                self.sinks.pop(name)

    def rewind(self, step: int) -> None:
        """The steps after `step` will be logged again (a resume or a restart redoes them): metrics.jsonl
        drops their records and TensorBoard hides them. W&B and MLflow keep what they received (W&B
        ignores steps lower than its last; MLflow keeps both values)."""
        for name in ("jsonl", "tensorboard"):
            if name in self.sinks:
                try:
                    self.sinks[name].rewind(step)
                except Exception as e:  # noqa: BLE001 - a failing dashboard must not stop training
                    _warn(f"run.log.{name}: rewind failed ({type(e).__name__}: {e}); dropped")
                    self.sinks.pop(name)

    def close(self) -> None:
        """Flush and close every destination (safe to call twice)."""
        for name, sink in list(self.sinks.items()):
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001
                _warn(f"run.log.{name}: close failed ({type(e).__name__}: {e})")
        self.sinks.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _warn(message: str):
    warnings.warn(message, MonitorWarning, stacklevel=3)


# --- reading back -------------------------------------------------------------------------------

def read_metrics(run_dir, *, raw: bool = False) -> list[dict]:
    """The records of run_dir/metrics.jsonl (or of that file given directly).

    By default one dict per step, sorted by step, the records of a step merged with later values
    winning: a step logged twice (train and eval metrics apart, or again after a resume) reads as
    one. `raw=True` gives the lines as written. A line that does not parse (the last one, cut off
    when a run was killed) is skipped; a bad line before the end is skipped with a warning.
    """
    path = Path(run_dir)
    path = path if path.is_file() else path / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {METRICS_FILE} at {path} (a run with run.log.jsonl=false "
                                "keeps its metrics in TensorBoard only)")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "step" not in record:
            if number < len(lines):
                _warn(f"{path}:{number}: not a metrics record; skipped")
            continue
        records.append(record)
    if raw:
        return records
    by_step: dict[int, dict] = {}
    for record in records:
        by_step.setdefault(record["step"], {}).update(record)
    return [by_step[step] for step in sorted(by_step)]
