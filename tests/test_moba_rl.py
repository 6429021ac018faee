"""RL with a MoBA model on the CPU: the config check keeps it off vLLM, and a short run completes."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deltarl.rl.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
MOBA = {"block_size": 4, "top_k": 1, "moba_layers": [4]}


def moba_checkpoint(tmp_path) -> Path:
    """The committed warm-up checkpoint with MoBA switched on in its one MLA layer (layer 4)."""
    folder = tmp_path / "moba-warmup"
    shutil.copytree(ROOT / "checkpoints" / "arithmetic-warmup", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "moba_config": MOBA}, indent=2))
    return folder


def test_vllm_is_refused_for_a_moba_model(tmp_path):
    fresh = ["model.path=null", "tokenizer=builtin:char", f"model.init={{moba_config: {json.dumps(MOBA)}}}"]
    for model in (fresh, [f"model.path={moba_checkpoint(tmp_path)}"]):
        with pytest.raises(ConfigError, match="rollout.engine: vllm does not serve MoBA"):
            load_config(ROOT / "configs" / "tiny_cpu.yaml", [*model, "rollout.engine=vllm"], check_files=False)
        assert load_config(ROOT / "configs" / "tiny_cpu.yaml", model, check_files=False).rollout.engine == "embedded"
    load_config(ROOT / "configs" / "tiny_cpu.yaml", ["rollout.engine=vllm"], check_files=False)   # dense: fine


def test_short_rl_run_with_a_moba_model(tmp_path):
    """Two GRPO steps through Ray: embedded rollouts decode with MoBA's cached gate, the DeepSpeed learner
    trains through MoBA over packed rows; the final policy keeps its moba_config."""
    checkpoint = moba_checkpoint(tmp_path)
    args = ["run.steps=2", "run.eval_every=0", "run.save_every=0", "run.progress_bar=false", "rollout.n=4",
            "rollout.prompts_per_step=4", "rollout.max_tokens=6", "data.train_size=64", "data.eval_size=8",
            "learner.micro_batch_tokens=256", f"model.path={checkpoint}", f"tokenizer={checkpoint}",
            f"run.output_dir={tmp_path}"]
    proc = subprocess.run([sys.executable, "run_rl.py", "--config", "configs/tiny_cpu.yaml", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1].split("run directory: ")[-1])
    from deltarl.rl.monitor import read_metrics
    steps = {int(m["step"]) for m in read_metrics(run_dir) if "reward/mean" in m}
    assert steps == {1, 2}
    final = json.loads((run_dir / "final" / "policy" / "config.json").read_text())
    assert final["moba_config"] == MOBA
