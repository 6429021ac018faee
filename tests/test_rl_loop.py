"""The RL loop end to end on the CPU, through Ray: rollout actor, rewards, DeepSpeed learner, weight sync,
checkpoints, resume after kill -9, failing reward functions, bad configs."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["run.steps=3", "run.eval_every=3", "run.save_every=2", "run.progress_bar=false",
         "rollout.n=4", "rollout.prompts_per_step=4", "rollout.max_tokens=6", "rollout.eval_n=2",
         "data.train_size=64", "data.eval_size=8", "learner.micro_batch_tokens=256"]


def run_rl(args, timeout=600, **popen):
    return subprocess.run([sys.executable, "run_rl.py", "--config", "configs/tiny_cpu.yaml", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, **popen)


def run_dir_of(output: str) -> Path:
    """The run directory run_rl.py printed (Ray's workers may print after it)."""
    return Path(re.findall(r"^run directory: (.+)$", output, re.M)[-1])


def metrics_by_step(run_dir: Path) -> dict[int, dict]:
    from deltarl.rl.monitor import read_metrics
    return {int(m["step"]): m for m in read_metrics(run_dir)}


def test_three_steps_through_ray_with_a_failing_reward(tmp_path):
    flaky = tmp_path / "flaky_reward.py"
    flaky.write_text("def reward(prompt, response, **fields):\n"
                     "    if len(response) % 2:\n        raise RuntimeError('boom')\n    return 0.5\n")
    functions = f"reward.functions=[{{name: accuracy, fn: arithmetic}}, {{name: flaky, fn: '{flaky}:reward'}}]"
    proc = run_rl([*SMALL, f"run.output_dir={tmp_path}", functions])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = run_dir_of(proc.stdout)
    steps = metrics_by_step(run_dir)
    assert set(range(1, 4)) <= set(steps)
    assert all("reward/mean" in steps[s] and "actor/entropy" in steps[s] for s in (1, 2, 3))
    failures = sum(steps[s].get("reward_fail/flaky/error", 0) for s in (1, 2, 3))
    assert failures > 0                                            # counted, and the run went on
    assert "eval/greedy_accuracy" in steps[3] and "eval/pass@2" in steps[0]
    assert (run_dir / "plots" / "reward.png").stat().st_size > 0

    from transformers import AutoModelForCausalLM

    import deltarl.model  # noqa: F401
    final = AutoModelForCausalLM.from_pretrained(run_dir / "final" / "policy")
    assert type(final).__name__ == "KimiLinearForCausalLM"
    assert json.loads((run_dir / "final" / "policy" / "config.json").read_text())["model_type"] == "kimi_linear"


def test_split_placement_with_two_engines_and_ppo_epochs(tmp_path):
    """Two rollout actors share each step's prompts; the learner takes ppo_epochs x mini_batches steps."""
    proc = run_rl([*SMALL, "run.steps=2", "run.eval_every=2", f"run.output_dir={tmp_path}", "ray.placement=split",
                   "ray.num_cpus=4", "rollout.num_workers=2", "rollout.prompts_per_step=5",
                   "algorithm.ppo_epochs=2", "algorithm.mini_batches=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = metrics_by_step(run_dir_of(proc.stdout))
    assert all(steps[s]["actor/updates"] == 4.0 for s in (1, 2))
    assert steps[2]["data/position"] == 10.0 and "eval/greedy_accuracy" in steps[2]


def policy_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def kill_when_checkpointed(args, tmp_path, at_least: int) -> Path:
    """Start a run, kill -9 its whole process group once checkpoint `at_least` exists; its run dir."""
    log = tmp_path.parent / f"{tmp_path.name}.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "run_rl.py", "--config", "configs/tiny_cpu.yaml", *args], cwd=ROOT,
                                stdout=sink, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 600
    run_dir = None
    while time.time() < deadline and proc.poll() is None:
        found = list(tmp_path.glob("*/checkpoints/latest"))
        if found and found[0].read_text().strip() >= f"step_{at_least:06d}":
            run_dir = found[0].parent.parent
            break
        time.sleep(0.5)
    exited = proc.poll()
    if exited is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert run_dir is not None, f"no checkpoint appeared (run exit code {exited}):\n{log.read_text()[-3000:]}"
    return run_dir


def test_kill_9_then_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    """Killed after its step-2 checkpoint and resumed, a run repeats and loses no step, and its final
    policy equals, bit for bit, that of the same run left alone: the optimizer state, LR schedule, RNG,
    data position, sampling seeds and the KL reference (the initial policy) all came back."""
    common = [*SMALL, "run.steps=5", "run.save_every=1", "run.eval_every=0", "learner.micro_batch_tokens=64"]
    whole = run_rl([*common, f"run.output_dir={tmp_path / 'whole'}"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    whole_dir = run_dir_of(whole.stdout)

    args = [*common, f"run.output_dir={tmp_path / 'killed'}"]
    run_dir = kill_when_checkpointed(args, tmp_path / "killed", at_least=2)
    killed_at = json.loads((run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
                            / "trainer_state.json").read_text())
    assert killed_at["step"] < 5
    resumed = run_rl([*args, f"resume={run_dir}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    steps, reference = metrics_by_step(run_dir), metrics_by_step(whole_dir)
    assert sorted(s for s in steps if s > 0) == [1, 2, 3, 4, 5]
    records = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert sorted(records) == [1, 2, 3, 4, 5], f"a step logged twice or lost: {records}"   # redone steps replaced
    assert "resumed from checkpoint step" in (run_dir / "events.jsonl").read_text()
    positions = [steps[s]["data/position"] for s in range(1, 6)]
    assert positions == [4.0 * s for s in range(1, 6)]            # 4 prompts a step, none skipped or redone
    assert all(steps[s]["actor/micro_batches"] > 1 for s in range(1, 6))   # accumulation was exercised
    for key in ("reward/mean", "actor/grad_norm", "actor/kl", "actor/lr"):
        assert [steps[s].get(key) for s in range(1, 6)] == [reference[s].get(key) for s in range(1, 6)], key
    final = json.loads((run_dir / "checkpoints" / "step_000005" / "trainer_state.json").read_text())
    assert (final["step"], final["position"]) == (5, 20)
    ours, theirs = policy_tensors(run_dir / "final" / "policy"), policy_tensors(whole_dir / "final" / "policy")
    assert ours.keys() == theirs.keys() and ours
    different = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"


def test_bad_config_fails_fast_with_the_field_named():
    start = time.perf_counter()
    proc = run_rl(["rollout.temprature=0.5"], timeout=60)
    assert proc.returncode == 2
    assert "rollout.temprature" in proc.stderr and "rollout.temperature" in proc.stderr
    proc = run_rl(["algorithm.advantage=ppo"], timeout=60)
    assert proc.returncode == 2 and "algorithm.advantage" in proc.stderr and "grpo" in proc.stderr
    assert time.perf_counter() - start < 20      # two interpreter starts; the check itself is milliseconds


@pytest.mark.parametrize("override", ["rollout.n=four", "learner.zero_stage=7"])
def test_bad_values_name_the_field(override):
    from deltarl.rl.config import ConfigError, load_config
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(str(ROOT / "configs" / "tiny_cpu.yaml"), [override])
    assert time.perf_counter() - start < 1.0
