"""deltarl.rl.monitor: metrics.jsonl, TensorBoard, W&B/MLflow when missing or failing, plots and the progress line.

The live W&B and MLflow runs are in test_monitor_live.py."""
import io
import json
import math
import random
import sys
import types

import numpy as np
import pytest

from deltarl.rl.config import LogConfig, load_config
from deltarl.rl.monitor import (METRICS_FILE, TENSORBOARD_DIR, Monitor, MonitorWarning, format_postfix,
                        plot_run, progress, read_metrics, smooth, summarize_run)

NO_TB = {"tensorboard": False}


def synthetic_run(run_dir, steps=40, eval_every=10, log_cfg=NO_TB):
    """A run whose reward climbs, entropy falls, and responses grow: what the trainer would log."""
    rng = random.Random(0)
    with Monitor(run_dir, log_cfg, "synthetic") as mon:
        for step in range(1, steps + 1):
            acc = min(1.0, step / steps + rng.gauss(0, 0.1))
            metrics = {"reward/mean": acc + 0.1, "reward/std": 0.2, "reward/accuracy/mean": acc,
                       "reward/format/mean": 0.1, "actor/entropy": 2.0 - step / steps + rng.random() * 0.1,
                       "response/length_mean": 20 + step, "response/length_max": 64,
                       "time/step_s": 1.5}
            if step % eval_every == 0:
                metrics["eval/accuracy"] = step / steps
            mon.log(step, metrics)


# --- metrics.jsonl ------------------------------------------------------------------------------

def test_jsonl_written_and_read(tmp_path):
    with Monitor(tmp_path, NO_TB, "t") as mon:
        mon.log(1, {"reward/mean": 0.5, "actor/entropy": np.float32(1.25), "response/length_mean": 7})
        mon.log(2, {"reward/mean": float("nan"), "actor/entropy": None})
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["reward/mean"] is None      # strict JSON
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["reward/mean"] == 0.5 and records[0]["actor/entropy"] == 1.25
    assert "actor/entropy" not in records[1] and "wall_time" in records[1]


def test_monitor_accepts_the_config_dataclass_and_torch_scalars(tmp_path):
    import torch
    cfg = load_config(None, ["run.log.tensorboard=false"])
    assert isinstance(cfg.run.log, LogConfig)
    with Monitor(tmp_path, cfg.run.log, cfg.run.name) as mon:
        mon.log(3, {"actor/loss": torch.tensor(0.25)})
    assert read_metrics(tmp_path)[0]["actor/loss"] == 0.25


def test_non_numbers_are_skipped_with_one_warning(tmp_path):
    with Monitor(tmp_path, NO_TB) as mon:
        with pytest.warns(MonitorWarning, match="'sample/text' is not a number"):
            mon.log(1, {"sample/text": "hello", "reward/mean": 1.0})
        mon.log(2, {"sample/text": "again", "reward/mean": 1.0})      # no second warning
    assert [r["reward/mean"] for r in read_metrics(tmp_path)] == [1.0, 1.0]


def test_read_metrics_survives_a_truncated_last_line(tmp_path, recwarn):
    synthetic_run(tmp_path, steps=5)
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"step": 6, "reward/me')                  # the run was killed mid-write
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert not [w for w in recwarn if issubclass(w.category, MonitorWarning)]


def test_read_metrics_warns_on_a_bad_line_before_the_end(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"step": 1, "a": 1}\nnot json\n{"step": 2, "a": 2}\n')
    with pytest.warns(MonitorWarning, match=":2: not a metrics record"):
        assert [r["a"] for r in read_metrics(tmp_path)] == [1, 2]


def test_records_of_one_step_merge_later_winning(tmp_path):
    with Monitor(tmp_path, NO_TB) as mon:
        mon.log(1, {"reward/mean": 0.1})
        mon.log(2, {"reward/mean": 0.2})
        mon.log(2, {"eval/accuracy": 0.5})          # eval logged apart, same step
    with Monitor(tmp_path, NO_TB) as mon:           # resumed from step 1: step 2 again
        mon.log(2, {"reward/mean": 0.3})
    records = read_metrics(tmp_path)
    assert records[-1]["step"] == 2 and records[-1]["reward/mean"] == 0.3
    assert records[-1]["eval/accuracy"] == 0.5
    assert len(read_metrics(tmp_path, raw=True)) == 4
    assert read_metrics(tmp_path / METRICS_FILE) == records


def test_read_metrics_of_a_run_without_jsonl(tmp_path):
    with pytest.raises(FileNotFoundError, match="run.log.jsonl=false"):
        read_metrics(tmp_path)


# --- TensorBoard --------------------------------------------------------------------------------

def tb_scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / TENSORBOARD_DIR))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_event_file_is_written_and_readable(tmp_path):
    with Monitor(tmp_path, None, "tb") as mon:      # None: the defaults, JSONL and TensorBoard on
        for step in (1, 2, 3):
            mon.log(step, {"reward/mean": step / 10, "perf/rollout_tokens_per_s": 100.0 * step})
    assert list((tmp_path / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    steps, values = zip(*tb_scalars(tmp_path, "reward/mean"))
    assert steps == (1, 2, 3) and values == pytest.approx([0.1, 0.2, 0.3])     # float32 in the file
    assert tb_scalars(tmp_path, "perf/rollout_tokens_per_s")[-1] == (3, 300.0)


def test_tensorboard_purge_step_hides_what_a_resumed_run_redoes(tmp_path):
    with Monitor(tmp_path) as mon:
        for step in (1, 2, 3, 4):
            mon.log(step, {"reward/mean": 1.0})
    with Monitor(tmp_path, purge_step=3) as mon:    # resumed from the checkpoint of step 2
        mon.log(3, {"reward/mean": 5.0})
    assert tb_scalars(tmp_path, "reward/mean") == [(1, 1.0), (2, 1.0), (3, 5.0)]


def test_rewind_keeps_one_record_per_step_in_the_same_process(tmp_path):
    """A learner restart redoes steps 3-4 in the running process: metrics.jsonl drops their first records
    and TensorBoard hides them, so both end with one value per step (the redone one)."""
    with Monitor(tmp_path) as mon:
        for step in (1, 2, 3, 4):
            mon.log(step, {"reward/mean": 1.0})
        mon.rewind(2)                               # back to the checkpoint of step 2
        for step in (3, 4, 5):
            mon.log(step, {"reward/mean": 5.0})
    records = read_metrics(tmp_path)
    assert [(r["step"], r["reward/mean"]) for r in records] == [(1, 1.0), (2, 1.0), (3, 5.0), (4, 5.0), (5, 5.0)]
    assert tb_scalars(tmp_path, "reward/mean") == [(1, 1.0), (2, 1.0), (3, 5.0), (4, 5.0), (5, 5.0)]


# --- W&B and MLflow -----------------------------------------------------------------------------

def test_wandb_and_mlflow_enabled_but_missing_warn_and_continue(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)     # import wandb raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.warns(MonitorWarning) as caught:
        mon = Monitor(tmp_path, {"wandb": True, "mlflow": True, "tensorboard": False}, "x", {"a": 1})
    text = " | ".join(str(w.message) for w in caught)
    assert "run.log.wandb is on but wandb is not installed (pip install wandb)" in text
    assert "run.log.mlflow is on but mlflow is not installed (pip install mlflow)" in text
    assert sorted(mon.sinks) == ["jsonl"]
    mon.log(1, {"reward/mean": 0.5})
    mon.close()
    assert read_metrics(tmp_path)[0]["reward/mean"] == 0.5


def failing_wandb():
    """A wandb whose every log() raises, as when the network goes down mid-run."""
    class Run:
        def log(self, data, step):
            raise ConnectionError("network down")

        def finish(self):
            pass
    return types.SimpleNamespace(init=lambda **kwargs: Run())


def test_a_sink_that_fails_is_dropped_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", failing_wandb())
    with Monitor(tmp_path, {"wandb": True, "tensorboard": False}) as mon:
        with pytest.warns(MonitorWarning, match="run.log.wandb: logging failed"):
            mon.log(1, {"reward/mean": 0.1})
        mon.log(2, {"reward/mean": 0.2})
        assert "wandb" not in mon.sinks
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


# --- plots --------------------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plots_of_a_synthetic_run(tmp_path):
    synthetic_run(tmp_path)
    paths = plot_run(tmp_path)
    assert [p.name for p in paths] == ["reward.png", "entropy.png", "length.png", "eval.png", "curves.png"]
    for p in paths:
        assert p.parent == tmp_path / "plots" and p.stat().st_size > 5000
        assert p.read_bytes()[:8] == PNG_MAGIC


def test_missing_metrics_skip_their_panel(tmp_path):
    with Monitor(tmp_path, NO_TB) as mon:
        for step in range(1, 6):
            mon.log(step, {"actor/entropy": 1.0 / step, "time/step_s": 1.0})
    paths = plot_run(tmp_path, out_dir=tmp_path / "figs", smoothing=0.5)
    assert [p.name for p in paths] == ["entropy.png", "curves.png"]
    assert all(p.parent == tmp_path / "figs" for p in paths)


def test_a_run_with_nothing_to_plot_gives_no_files(tmp_path):
    with Monitor(tmp_path, NO_TB) as mon:
        mon.log(1, {"time/step_s": 1.0})
    assert plot_run(tmp_path) == [] and not (tmp_path / "plots").exists()


def test_smoothing_is_debiased_and_follows_a_constant():
    assert smooth([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    assert smooth([0.0, 1.0], 0.0) == [0.0, 1.0]
    assert not any(math.isnan(v) for v in smooth([1.0, 5.0, 3.0], 0.8))


# --- progress -----------------------------------------------------------------------------------

STEP = {"reward/mean": 0.4123, "reward/accuracy/mean": 0.38, "actor/entropy": 1.23,
        "response/length_mean": 37.2, "time/step_s": 1.74}


def test_postfix_is_compact():
    assert format_postfix(STEP) == "reward=0.412 acc=0.380 ent=1.230 len=37 t=1.7s"
    assert format_postfix({"reward/total": 1}) == "reward=1.000"
    assert format_postfix({}) == ""


def test_progress_prints_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    bar = progress(3, True, file=out)
    bar.update(STEP)
    bar.write("eval: accuracy 0.5")
    bar.update({})
    bar.close()
    assert out.getvalue().splitlines() == [
        "step 1/3 reward=0.412 acc=0.380 ent=1.230 len=37 t=1.7s", "eval: accuracy 0.5", "step 2/3"]


def test_progress_draws_a_tqdm_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    out = Terminal()
    bar = progress(10, True, file=out, initial=4)     # a resumed run
    bar.update(STEP)
    bar.close()
    text = out.getvalue()
    assert "5/10" in text and "reward=0.412" in text and "t=1.7s" in text


def test_progress_disabled_is_silent():
    out = io.StringIO()
    bar = progress(3, False, file=out)
    bar.update(STEP)
    bar.write("x")
    bar.close()
    assert out.getvalue() == ""


# --- summary ------------------------------------------------------------------------------------

def test_summary_gives_window_means_and_evaluations(tmp_path):
    with Monitor(tmp_path, NO_TB, "t") as mon:
        for step, reward in enumerate([0.1, 0.2, 0.4, 0.8], start=1):
            mon.log(step, {"reward/mean": reward, "time/step_s": 2.0 * step})
        mon.log(0, {"eval/greedy_accuracy": 0.25})
        mon.log(4, {"eval/greedy_accuracy": 0.5})
    text = summarize_run(tmp_path, window=2)
    rows = [line for line in text.splitlines() if line.startswith("| 1-2") or line.startswith("| 3-4")]
    assert rows == ["| 1-2 | 0.150 | 3.00 |", "| 3-4 | 0.600 | 7.00 |"]
    assert "| 0 | 0.250 |" in text and "| 4 | 0.500 |" in text


def test_plot_and_summary_commands_reject_bad_arguments(tmp_path, capsys):
    from run_rl import main
    assert main(["summary"]) == 2 and "usage: run_rl.py summary RUN_DIR" in capsys.readouterr().err
    assert main(["summary", str(tmp_path), "0"]) == 2
    assert main(["plot", str(tmp_path), "extra"]) == 2
    assert main(["summary", str(tmp_path)]) == 2 and "no metrics.jsonl" in capsys.readouterr().err
    synthetic_run(tmp_path, steps=4, eval_every=2)
    assert main(["summary", str(tmp_path), "2"]) == 0 and "| 1-2 |" in capsys.readouterr().out
