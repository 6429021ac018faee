"""Where vLLM's decode step time goes for the hybrid benchmark model (GPU machine, vLLM kit).

benchmarks/rollout.py measured 8.3 ms per decode step for the 106M hybrid at 64 x 4K, several times
what its bytes say. Reading vLLM 0.26 (no run yet) says pure-decode batches should replay a full CUDA
graph (FULL_AND_PIECEWISE, KDA through fused_recurrent_kda, FA3 for MLA) with async scheduling on, so
this script checks that on the machine:

  1. decode tokens/s with and without per-token logprobs (the RL engine asks for them);
  2. the inter-token latency from vLLM's own metrics (`get_metrics()`, needs log stats on);
  3. a torch-profiler trace of decode steps only (`profiler_config`, start_profile / stop_profile),
     whose kernel table (profiler_out_*.txt) says GPU-bound or CPU-bound;
  4. whether each timed window was pure decode: vLLM's own counters before and after it (preemptions,
     prompt tokens, running / waiting requests), beside what the engine chose (KV and state block sizes,
     cache blocks, CUDA-graph mode and capture sizes, batched-token budget).

    PYTHONPATH=/tmp/site:. python3 benchmarks/vllm_decode_profile.py --out $OUT [--mode default|full_decode_only]
        [--model hybrid|mla] [--cells 64x4096,256x32768,64x131072] [--vllm-arg KEY=VALUE ... --tag NAME]

`--mode full_decode_only` builds the engine with compilation off and full CUDA graphs for decode only
(sizes 64 and 256) and synchronous scheduling: a second data point, and a faster start.
`--vllm-arg KEY=VALUE` (repeatable; VALUE read as YAML) adds or replaces an argument of `vllm.LLM`, the
same ones a run passes through `rollout.vllm_kwargs` (e.g. `mamba_ssm_cache_dtype=float32`,
`max_num_batched_tokens=8192`, `compilation_config={cudagraph_capture_sizes: [64, 256]}`); `--tag` names
that variant's files.
Writes OUT/vllm_decode_<model>_<mode>[_<tag>].md (+ the profiler's files under OUT/trace_<model>_<mode>[_<tag>]/).
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.rollout import (VLLM_PREFILL_TOKENS, bench_config, fmt, random_prompts, timed_decode,  # noqa: E402
                                warm_start)
from deltarl.model import KimiLinearForCausalLM  # noqa: E402

def parse_vllm_args(items: list[str]) -> dict:
    """`KEY=VALUE` strings as keyword arguments (VALUE read as YAML: numbers, lists and mappings typed)."""
    args = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--vllm-arg {item!r}: expected KEY=VALUE, e.g. mamba_ssm_cache_dtype=float32")
        args[key] = yaml.safe_load(value)
    return args


def build_llm(path, mode, context, trace_dir, first, extra: dict):
    from vllm import LLM
    kwargs = dict(model=str(path), dtype="bfloat16", gpu_memory_utilization=0.85, max_model_len=context + 1024,
                  max_num_seqs=256, skip_tokenizer_init=True, enable_prefix_caching=False, disable_log_stats=False,
                  profiler_config={"profiler": "torch", "torch_profiler_dir": str(trace_dir),
                                   "torch_profiler_with_stack": False, "ignore_frontend": True,
                                   "delay_iterations": first, "max_iterations": 16})
    if mode == "full_decode_only":
        kwargs.update(compilation_config={"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY",
                                          "cudagraph_capture_sizes": [64, 256]}, async_scheduling=False)
    return LLM(**(kwargs | extra))


def tokens_per_s(llm, prompts, first, logprobs):
    """Decode tokens/s as benchmarks/rollout.py measures it (`timed_decode`), straight on `vllm.LLM`."""
    from vllm import SamplingParams

    def run(prompts, new):
        params = SamplingParams(temperature=0, max_tokens=new, ignore_eos=True, logprobs=logprobs)
        llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)

    return timed_decode(run, prompts, first)


COUNTERS = ("vllm:num_preemptions", "vllm:prompt_tokens", "vllm:num_requests_running", "vllm:num_requests_waiting")


def counters(llm) -> dict:
    """The scheduler counters and gauges of COUNTERS now (summed over label sets)."""
    out = dict.fromkeys(COUNTERS, 0.0)
    for metric in llm.get_metrics():
        if metric.name in out:
            out[metric.name] += float(getattr(metric, "value", 0) or 0)
    return out


def engine_choices(llm) -> list[str]:
    """What vLLM chose for this model: cache block sizes and count, CUDA-graph mode and sizes, budgets."""
    config = llm.llm_engine.vllm_config
    cache, sched, comp = config.cache_config, config.scheduler_config, config.compilation_config
    facts = {"block_size (tokens)": cache.block_size, "mamba_block_size": getattr(cache, "mamba_block_size", None),
             "num_gpu_blocks": cache.num_gpu_blocks, "cache_dtype": cache.cache_dtype,
             "mamba_ssm_cache_dtype": getattr(cache, "mamba_ssm_cache_dtype", None),
             "max_num_seqs": sched.max_num_seqs, "max_num_batched_tokens": sched.max_num_batched_tokens,
             "async_scheduling": getattr(sched, "async_scheduling", None),
             "cudagraph_mode": getattr(comp, "cudagraph_mode", None),
             "cudagraph_capture_sizes": getattr(comp, "cudagraph_capture_sizes", None)}
    return [f"- {k}: {v}" for k, v in facts.items()]


def inter_token_latency(llm):
    """Mean inter-token latency (s) over everything generated so far, from vLLM's histogram."""
    for metric in llm.get_metrics():
        if metric.name == "vllm:inter_token_latency_seconds" and getattr(metric, "count", 0):
            return metric.sum / metric.count
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", default="default", choices=["default", "full_decode_only"])
    ap.add_argument("--cells", default="64x4096,256x4096", help="comma-separated BxL")
    ap.add_argument("--model", default="hybrid", choices=["hybrid", "mla"], help="rollout.py's 106M hybrid or all-MLA")
    ap.add_argument("--vllm-arg", action="append", default=[], help="KEY=VALUE: another vllm.LLM argument")
    ap.add_argument("--tag", default="", help="names the files of a --vllm-arg variant")
    args = ap.parse_args()
    try:
        extra = parse_vllm_args(args.vllm_arg)
    except ValueError as error:
        ap.error(str(error))
    if extra and not args.tag:
        ap.error("--vllm-arg: name the variant with --tag (its files would replace the default run's)")
    name = f"{args.model}_{args.mode}" + (f"_{args.tag}" if args.tag else "")
    out = Path(args.out)
    if not all(c.count("x") == 1 and all(x.isdigit() for x in c.split("x")) for c in args.cells.split(",")):
        ap.error(f"--cells: {args.cells!r} is not a comma-separated list of BxL (e.g. 64x4096,256x4096)")
    cells = [tuple(int(x) for x in c.split("x")) for c in args.cells.split(",")]
    context = max(length for _, length in cells)
    lines = [f"# vLLM decode, {args.model} 106M ({torch.cuda.get_device_name()}), mode {args.mode}", "",
             *([f"Extra vllm.LLM arguments: `{json.dumps(extra)}`.", ""] if extra else []),
             "Counters: change over the cell's timed runs (both tokens/s columns); a pure-decode window has no "
             "preemptions, and prompt tokens = 3 runs x 2 columns x batch x context (each run prefills its batch once).", "",
             "| batch | context | tokens/s, no logprobs | tokens/s, logprobs=0 | ms per step (no logprobs) "
             "| preemptions | prompt tokens | running / waiting after |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        KimiLinearForCausalLM(bench_config(args.model == "mla")).to(torch.bfloat16).save_pretrained(tmp)
        trace_dir = (out / f"trace_{name}").resolve()
        first = warm_start(*cells[0], VLLM_PREFILL_TOKENS)
        llm = build_llm(tmp, args.mode, context, trace_dir, first, extra)
        llm.generate([{"prompt_token_ids": p} for p in random_prompts(4, 256)], use_tqdm=False)   # warm-up
        choices = engine_choices(llm)
        print("\n".join(choices), flush=True)
        results = {}
        for batch, length in cells:
            prompts = random_prompts(batch, length)
            d1 = warm_start(batch, length, VLLM_PREFILL_TOKENS)
            before = counters(llm)
            plain = tokens_per_s(llm, prompts, d1, None)
            with_lp = tokens_per_s(llm, prompts, d1, 0)
            after = counters(llm)
            delta = {k: after[k] - before[k] for k in COUNTERS}
            results[f"{batch}x{length}"] = dict(no_logprobs=plain, logprobs=with_lp, counters_before=before,
                                                counters_after=after)
            step_ms = f"{batch / plain * 1e3:.2f}" if isinstance(plain, float) else ""
            lines.append(f"| {batch} | {length:,} | {fmt(plain)} | {fmt(with_lp)} | {step_ms} "
                         f"| {delta['vllm:num_preemptions']:.0f} | {delta['vllm:prompt_tokens']:,.0f} "
                         f"| {after['vllm:num_requests_running']:.0f} / {after['vllm:num_requests_waiting']:.0f} |")
            print(lines[-1], flush=True)
        lines += ["", "What vLLM chose for this model:", "", *choices]
        itl = inter_token_latency(llm)
        lines += ["", f"Mean inter-token latency over all requests (vLLM metrics, prefill steps included): "
                  f"{itl * 1e3:.2f} ms."]
        # the profile: decode steps of the first cell only (the first `first` engine steps are prefill)
        from vllm import SamplingParams
        batch, length = cells[0]
        llm.start_profile()
        llm.generate([{"prompt_token_ids": p} for p in random_prompts(batch, length)],
                     SamplingParams(temperature=0, max_tokens=first + 32, ignore_eos=True), use_tqdm=False)
        llm.stop_profile()
        lines += ["", f"Profile: {trace_dir} (decode steps {first}..{first + 16} of {batch} x {length:,})."]
    text = "\n".join(lines) + "\n"
    print(text)
    (out / f"vllm_decode_{name}.md").write_text(text)
    (out / f"vllm_decode_{name}.json").write_text(
        json.dumps(dict(results=results, itl_s=itl), indent=1, default=str))


if __name__ == "__main__":
    main()
