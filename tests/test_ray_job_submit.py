"""The path users take to a cluster: `ray start --head`, then `ray job submit --working-dir .`.

The job's working directory is a copy of the repository that Ray unpacks on the cluster, so this also
checks that nothing the run needs lies outside what `--working-dir .` uploads.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deltarl.rl.learner import free_port

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.mark.slow
def test_ray_job_submit_runs_two_steps_on_a_local_cluster(tmp_path):
    # Ray 2.60 turns token authentication on for `ray start`; its CLI sends the token when told to
    # the environment of a user whose virtual environment is active: `python` is this interpreter
    env = dict(os.environ, RAY_AUTH_MODE="token",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    env.pop("RAY_ADDRESS", None)
    gcs_port, dashboard_port = free_port(), free_port()
    start = [RAY, "start", "--head", "--port", str(gcs_port), "--dashboard-port", str(dashboard_port),
             "--num-cpus", "2", "--disable-usage-stats"]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
    try:
        out_dir = tmp_path / "runs"
        job = subprocess.run(
            [RAY, "job", "submit", "--address", f"http://127.0.0.1:{dashboard_port}", "--working-dir", ".",
             "--", "python", "run_rl.py", "--config", "configs/tiny_cpu.yaml", "run.steps=2",
             "run.eval_every=0", "run.progress_bar=false", f"run.output_dir={out_dir}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
        assert "succeeded" in job.stdout + job.stderr
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
    (run_dir,) = out_dir.iterdir()
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert (run_dir / "final" / "policy" / "config.json").exists()
