"""W&B (offline mode) and MLflow (its default local store) for real: every step's metrics arrive.

Both packages are in the `dev` extra, at the versions of requirements.lock, so these tests run in CI.
Each run's data is read back from what the package itself wrote, not from what the Monitor sent.
"""
import json
import struct

from deltarl.rl.monitor import Monitor

STEPS = {1: {"reward/mean": 0.25, "actor/entropy": 1.5},
         2: {"reward/mean": 0.5, "actor/entropy": 1.25},
         3: {"reward/mean": 0.75, "actor/entropy": float("nan")}}   # non-finite: MLflow skips it


def log_steps(run_dir, log_cfg, steps):
    with Monitor(run_dir, log_cfg, "live", {"rollout": {"n": 8}}) as mon:
        assert sorted(mon.sinks) == sorted(k for k in ("jsonl", "wandb", "mlflow") if log_cfg.get(k, k == "jsonl"))
        for step in steps:
            mon.log(step, STEPS[step])


# --- W&B ------------------------------------------------------------------------------------------

def wandb_records(run_file):
    """The protobuf Records of a W&B run file (`run-<id>.wandb`): a 7-byte header (":W&B", magic,
    version), then LevelDB-log blocks of 32 KiB whose records are checksum(4) length(2) type(1) data,
    a record split over blocks as FIRST, MIDDLE..., LAST pieces."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a W&B run file"
    block, pos, pieces = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:                     # too little room for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break                                       # zero fill at the end of the file
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):                              # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record
            pieces = b""


def wandb_history(run_dir):
    """{step: {key: value}} of the history records W&B wrote under run_dir/wandb."""
    files = sorted(run_dir.glob("wandb/*run-*/run-*.wandb"))
    assert files, f"W&B wrote no run file under {run_dir / 'wandb'}"
    history = {}
    for file in files:
        for record in wandb_records(file):
            if record.WhichOneof("record_type") == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item}
                history.setdefault(items.pop("_step"), {}).update(
                    {k: v for k, v in items.items() if not k.startswith("_")})
    return history


def test_wandb_offline_run_records_every_step_and_resumes_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    log_steps(tmp_path, {"wandb": True, "tensorboard": False, "project": "deltarl-test"}, [1, 2])
    run_id = (tmp_path / "wandb_id").read_text()
    log_steps(tmp_path, {"wandb": True, "tensorboard": False, "project": "deltarl-test"}, [3])  # resumed
    assert (tmp_path / "wandb_id").read_text() == run_id
    assert all(run_id in f.name for f in tmp_path.glob("wandb/*run-*/run-*.wandb"))
    history = wandb_history(tmp_path)
    assert sorted(history) == [1, 2, 3]
    for step, metrics in STEPS.items():
        assert history[step]["reward/mean"] == metrics["reward/mean"]
    assert history[2]["actor/entropy"] == 1.25


# --- MLflow ---------------------------------------------------------------------------------------

def test_mlflow_default_store_records_params_and_every_finite_metric(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)                         # MLflow's default store is relative to the cwd
    run_dir = tmp_path / "run"
    log_steps(run_dir, {"mlflow": True, "tensorboard": False}, [1, 2])
    log_steps(run_dir, {"mlflow": True, "tensorboard": False}, [3])      # resumed: the same MLflow run
    client = mlflow.tracking.MlflowClient()
    run = client.get_run((run_dir / "mlflow_run_id").read_text())
    assert run.data.params == {"rollout.n": "8"} and run.info.run_name == "live"
    reward = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "reward/mean")}
    entropy = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "actor/entropy")}
    assert reward == {step: m["reward/mean"] for step, m in STEPS.items()}
    assert entropy == {1: 1.5, 2: 1.25}
