"""The benchmark scripts' parts that can be checked here: vllm_decode_profile.py's --vllm-arg values typed as
YAML (a malformed or unnamed variant refused before anything starts), and results files keeping their history."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import EARLIER, previous_report, with_earlier_runs  # noqa: E402
from benchmarks.vllm_decode_profile import parse_vllm_args  # noqa: E402


def test_vllm_args_are_typed_as_yaml():
    assert parse_vllm_args(["mamba_ssm_cache_dtype=float32", "max_num_batched_tokens=8192",
                            "compilation_config={cudagraph_capture_sizes: [64, 256]}", "async_scheduling=false"]) == {
        "mamba_ssm_cache_dtype": "float32", "max_num_batched_tokens": 8192,
        "compilation_config": {"cudagraph_capture_sizes": [64, 256]}, "async_scheduling": False}


@pytest.mark.parametrize("item", ["max_num_seqs", "=3", "max num=3"])
def test_a_malformed_vllm_arg_names_itself(item):
    with pytest.raises(ValueError, match=f"--vllm-arg '{item}': expected KEY=VALUE"):
        parse_vllm_args([item])


@pytest.mark.parametrize("argv, message", [
    (["--vllm-arg", "max_num_seqs=64"], "name the variant with --tag"),
    (["--vllm-arg", "max_num_seqs"], "expected KEY=VALUE"),
])
def test_the_script_refuses_before_starting(tmp_path, argv, message):
    proc = subprocess.run([sys.executable, "benchmarks/vllm_decode_profile.py", "--out", str(tmp_path), *argv],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_a_results_file_keeps_every_earlier_report_newest_first(tmp_path):
    path = tmp_path / "moba_GPU.md"
    assert previous_report(path) == ""
    for run in (1, 2, 3):
        text = f"# MoBA (GPU)\n\nrun {run}\n\n## Time\n\n| a | {run} |\n"
        path.write_text(with_earlier_runs(text, previous_report(path)))
    written = path.read_text()
    assert written.startswith("# MoBA (GPU)\n\nrun 3\n")
    assert written.count("# MoBA (GPU)") == 1 and written.count(EARLIER) == 1
    assert written.index("run 3") < written.index(EARLIER) < written.index("run 2") < written.index("run 1")
    assert written.count("| a | 2 |") == 1 and written.count("| a | 1 |") == 1


def test_a_first_report_has_no_earlier_runs_section():
    assert with_earlier_runs("# T\n\nbody\n", "") == "# T\n\nbody\n"
