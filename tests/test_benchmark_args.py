"""Arguments of the GPU benchmark scripts that can be checked here: vllm_decode_profile.py's --vllm-arg values
typed as YAML, and a malformed or unnamed variant refused before anything starts."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

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
