"""The arguments a run gives its rollout engines: vLLM's context length sized from the data (or refused when a
prompt and its response would not fit), rollout.vllm_kwargs passed through, and the embedded engine untouched."""
import subprocess
import sys
from pathlib import Path

import pytest

from deltarl.model import load_tokenizer
from deltarl.rl.config import ConfigError, load_config
from deltarl.rl.trainer import engine_kwargs, load_rows, vllm_context_length

REPO = Path(__file__).resolve().parents[1]


def rows_and_tokenizer(cfg):
    tokenizer = load_tokenizer(cfg.tokenizer)
    train, held_out = load_rows(cfg, tokenizer)
    return train + held_out, tokenizer


def test_null_max_model_len_is_the_longest_prompt_plus_max_tokens():
    cfg = load_config("configs/tiny_cpu.yaml", ["rollout.engine=vllm", "rollout.max_tokens=7"])
    rows, tokenizer = rows_and_tokenizer(cfg)
    longest = max(len(tokenizer(r["prompt"]).input_ids) for r in rows)
    assert longest > 0
    assert vllm_context_length(cfg, tokenizer, rows) == longest + 7


def test_a_set_max_model_len_is_kept_when_it_fits_and_refused_naming_the_numbers_when_not():
    base = ["rollout.engine=vllm", "rollout.max_tokens=7"]
    cfg = load_config("configs/tiny_cpu.yaml", base + ["rollout.max_model_len=4096"])
    rows, tokenizer = rows_and_tokenizer(cfg)
    assert vllm_context_length(cfg, tokenizer, rows) == 4096
    longest = max(len(tokenizer(r["prompt"]).input_ids) for r in rows)
    short = load_config("configs/tiny_cpu.yaml", base + [f"rollout.max_model_len={longest + 6}"])
    with pytest.raises(ConfigError, match=rf"rollout.max_model_len: {longest + 6} tokens do not hold the longest "
                                          rf"prompt \({longest} tokens\) .* at least {longest + 7}"):
        vllm_context_length(short, tokenizer, rows)


def test_the_embedded_engine_gets_no_vllm_arguments():
    cfg = load_config("configs/tiny_cpu.yaml")
    rows, tokenizer = rows_and_tokenizer(cfg)
    assert vllm_context_length(cfg, tokenizer, rows) is None
    assert engine_kwargs(cfg, "tok", None) == {"tokenizer_path": "tok", "max_batch_size": cfg.rollout.max_batch_size,
                                               "dtype": cfg.model.dtype}


def test_vllm_engines_get_the_context_length_and_the_extra_arguments():
    cfg = load_config("configs/tiny_cpu.yaml", ["rollout.engine=vllm", "rollout.enforce_eager=true",
                                                "rollout.vllm_kwargs.max_num_seqs=32",
                                                "rollout.vllm_kwargs.mamba_ssm_cache_dtype=float32"])
    kwargs = engine_kwargs(cfg, "tok", 300)
    assert kwargs == {"tokenizer_path": "tok", "max_batch_size": cfg.rollout.max_batch_size, "dtype": "bfloat16",
                      "gpu_memory_utilization": cfg.rollout.gpu_memory_utilization, "enforce_eager": True,
                      "max_model_len": 300, "max_num_seqs": 32, "mamba_ssm_cache_dtype": "float32"}


def test_run_rl_refuses_a_too_short_context_before_starting_anything(tmp_path):
    proc = subprocess.run([sys.executable, "run_rl.py", "--config", "configs/tiny_cpu.yaml", "rollout.engine=vllm",
                           "rollout.max_model_len=6", "rollout.max_tokens=5", f"run.output_dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config error: rollout.max_model_len: 6 tokens do not hold the longest prompt" in proc.stderr
