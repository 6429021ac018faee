"""Decode throughput and cache memory: hybrid Kimi Linear vs an all-MLA model of the same dimensions,
served by vLLM and by deltarl's embedded engine (GPU machine). Our measurement of the paper's claims.

Decode throughput of a cell (engine, model, batch B, context L) = B * D / (t(L prompt, D1 + D new tokens)
- t(L prompt, D1 new tokens)). Engines prefill in chunks interleaved with decoding (vLLM: 16K tokens a
step; the embedded engine: its prefill budget), so the first tokens of a run overlap other sequences'
prefill; D1 = the prefill span in steps plus a margin puts both runs past it, and the difference is D
steps with all B sequences decoding. One untimed run of each cell goes first, so kernels compiled or
autotuned on first use of a shape do not land in t(D1). Cells that do not fit in memory, or come after the time budget, are
reported as such. Writes benchmarks/results/rollout_<device>.md.

Beside tokens/s, each cell's milliseconds per decode step (B / tokens/s) against its bytes-per-step floor:
a step must at least read the weights once, and per sequence read and write every KDA state and read
every MLA latent (at the context L + D/2, the timed window's middle), at the copy bandwidth measured on the
same GPU (`copy_bandwidth`). A cell far above its floor spends its time elsewhere than moving its state.

    PYTHONPATH=/tmp/site:. python3 benchmarks/rollout.py [--budget-s 300] [--models hybrid,mla]
        [--engines vllm,embedded] [--embedded-cells 64x4096,256x4096,64x32768]

Values are kept per model, cell and engine in benchmarks/results/rollout_<device>.json, so calls that
run part of the table (the embedded engine needs no vLLM kit) add up to one table; carry that file
back from $OUT between device calls.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deltarl.model import KimiLinearForCausalLM, cache_bytes_per_sequence, tiny_config  # noqa: E402

DECODE_TOKENS = 128              # D: decode steps timed
VLLM_PREFILL_TOKENS = 16384      # vLLM's chunked-prefill budget per step (its default on an H100)
CELLS = [(64, 4096), (256, 4096), (64, 32768), (256, 32768), (64, 131072)]      # (batch, context)


def warm_start(batch, length, prefill_tokens):
    """D1: new tokens after which every sequence of the cell is past prefill, plus a margin."""
    return -(-batch * length // prefill_tokens) + 8


def timed_decode(generate, prompts, first):
    """Tokens/s of DECODE_TOKENS decode steps of the whole batch: B * D / (t(first + D) - t(first)).
    One untimed run at the cell's shape comes first: kernels compiled or autotuned for a new shape (vLLM's
    Triton kernels do this on first use) would otherwise land in t(first) and swamp the decode time."""
    generate(prompts, first)
    times = []
    for new in (first, first + DECODE_TOKENS):
        t0 = time.perf_counter()
        generate(prompts, new)
        times.append(time.perf_counter() - t0)
    if times[1] <= times[0]:
        return f"not measurable (t(D1+D) {times[1]:.2f} s <= t(D1) {times[0]:.2f} s)"
    return len(prompts) * DECODE_TOKENS / (times[1] - times[0])


def bench_config(all_mla: bool):
    """8 layers, hidden 1024: 6 KDA + 2 MLA (hybrid) or 8 MLA, MLA dims as the released model."""
    return tiny_config(vocab_size=128, hidden_size=1024, num_layers=8, num_heads=8, kda_head_dim=128, mla_heads=8,
                       kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                       intermediate_size=2816, kda_every=1 if all_mla else 4, eos_token_id=2, pad_token_id=0)


def step_floor_bytes(config, params: int, batch: int, context: int) -> int:
    """Bytes a decode step must move at least: bf16 weights read once, and per sequence every KDA state
    read and written and every MLA latent read (`cache_bytes_per_sequence` at `context`)."""
    cache = cache_bytes_per_sequence(config, context, torch.bfloat16)
    return 2 * params + batch * (2 * cache["kda"] + cache["mla"])


def copy_bandwidth(gib: float = 2.0) -> float:
    """Device memory bandwidth in bytes/s of a large copy (bytes read + bytes written over the median time),
    the floor's yardstick here and in benchmarks/kda_kernels.py."""
    import triton.testing
    x = torch.empty(int(gib * 2**30), dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=50, rep=200, return_mode="median")
    return 2 * x.numel() / (ms * 1e-3)


def random_prompts(batch, length, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(4, 100, (batch, length), generator=gen).tolist()


def vllm_cells(path: str, cells, budget_s: float, result_file: str, all_mla: bool):
    """Own process: vLLM holds the GPU until exit. Results are written after every cell, so a run cut
    short keeps what it measured. For the all-MLA model, a cell whose sequences cannot all hold their
    KV cache at once is reported instead of run (vLLM would preempt and recompute, which measures
    thrashing, not decoding)."""
    from deltarl.rollout import SamplingParams, VLLMEngine
    engine = VLLMEngine(path, dtype="bfloat16", gpu_memory_utilization=0.85, max_model_len=131072 + 1024,
                        enforce_eager=False, enable_sleep_mode=False, max_num_seqs=256,
                        skip_tokenizer_init=True)      # token ids in, token ids out
    cache = engine.llm.llm_engine.vllm_config.cache_config
    capacity = (cache.num_gpu_blocks or 0) * cache.block_size          # tokens of KV cache
    if not capacity:     # the engine core (another process) sized the cache: estimate as vLLM does
        from deltarl.model import KimiLinearConfig
        per_token = cache_bytes_per_sequence(KimiLinearConfig.from_pretrained(path), 1, torch.bfloat16)["total"]
        free = 0.85 * torch.cuda.get_device_properties(0).total_memory - 4 * 2**30   # weights, graphs, activations
        capacity = int(free // per_token)
    print(f"vLLM KV cache: about {capacity:,} tokens", flush=True)
    engine.generate(random_prompts(4, 256), SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))  # warm-up
    start, results = time.perf_counter(), {}
    for batch, length in cells:
        cell, first = f"{batch}x{length}", warm_start(batch, length, VLLM_PREFILL_TOKENS)
        if time.perf_counter() - start > budget_s:
            results[cell] = "skipped (time budget)"
        elif all_mla and capacity and batch * (length + first + DECODE_TOKENS) > capacity:
            results[cell] = f"KV cache holds {capacity // (length + first + DECODE_TOKENS)} of {batch} sequences"
        else:
            run = lambda prompts, new: engine.generate(  # noqa: E731
                prompts, SamplingParams(temperature=0, max_tokens=new, ignore_eos=True))
            results[cell] = timed_decode(run, random_prompts(batch, length), first)
        print(f"vLLM {cell}: {results[cell]}", flush=True)
        Path(result_file).write_text(json.dumps(results))


@torch.no_grad()
def embedded_cell(model, batch, length):
    from deltarl.rollout import EmbeddedEngine, SamplingParams
    engine = EmbeddedEngine(model, max_batch_size=batch)
    prompts = random_prompts(batch, length)
    engine.generate(prompts[:4], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))   # compile

    def run(prompts, new):
        engine.generate(prompts, SamplingParams(temperature=0, max_tokens=new, ignore_eos=True))
        torch.cuda.synchronize()

    first = warm_start(batch, length, engine.max_prefill_tokens)
    return timed_decode(run, prompts, first)


def fmt(value):
    return f"{value:,.0f}" if isinstance(value, float) else value


def step_ms(batch, tokens_per_s):
    """Milliseconds per decode step of a cell measured at `tokens_per_s` (None when not a number)."""
    return batch / tokens_per_s * 1e3 if isinstance(tokens_per_s, float) else None


def fmt_ms(ms):
    return "" if ms is None else f"{ms:.2f}"


MODELS = {"hybrid": ("hybrid (6 KDA + 2 MLA)", False), "mla": ("all-MLA (8 MLA)", True)}
ENGINES = ("vllm", "embedded")


def record(entry, engine, value):
    """Set a cell's value for one engine; a failure or skip does not replace a number measured earlier."""
    if isinstance(value, float) or not isinstance(entry.get(engine), float):
        entry[engine] = value


def run_model(key, args, tmp, model_results, save):
    """The cells of one model on the engines asked for: vLLM in a child process, then the embedded engine
    here. `model_results` holds {cell: {engine: value}} and is updated in place, only for what runs now
    (so separate calls, e.g. the embedded engine on a machine without vLLM, fill one table); `save()` is
    called after the vLLM cells and after every embedded cell, so a run cut short keeps what it measured."""
    name, all_mla = MODELS[key]
    torch.manual_seed(0)
    model = KimiLinearForCausalLM(bench_config(all_mla)).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    model_results["name"] = f"{name}, {params:.0f}M"
    cells = model_results.setdefault("cells", {})
    for batch, length in CELLS:
        entry = cells.setdefault(f"{batch}x{length}", {})
        entry["cache_mib"] = cache_bytes_per_sequence(model.config, length, torch.bfloat16)["total"] / 2**20
        entry["floor_bytes"] = step_floor_bytes(model.config, int(params * 1e6), batch, length + DECODE_TOKENS // 2)
    engines = args.engines.split(",")
    if "vllm" in engines:
        path = Path(tmp) / key
        model.save_pretrained(path)
        result_file = Path(tmp) / f"{key}.json"
        code = (f"import benchmarks.rollout as b; b.vllm_cells({str(path)!r}, {CELLS!r}, {args.budget_s}, "
                f"{str(result_file)!r}, {all_mla})")
        # the child's stdout (one line per cell) streams into this run's log; stderr (vLLM's logs) is kept
        # for the failure reason
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=None, stderr=subprocess.PIPE,
                              text=True, timeout=900)
        done = json.loads(result_file.read_text()) if result_file.exists() else {}
        reason = f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:120]}"
        for cell, entry in cells.items():
            record(entry, "vllm", done.get(cell, reason))
        save()
    if "embedded" not in engines:
        return
    model = model.cuda().eval()
    chosen = args.embedded_cells.split(",")                       # checked against CELLS in main()
    for cell in chosen:
        record(cells[cell], "embedded", "pending")
    save()
    start = time.perf_counter()
    for cell in chosen:
        batch, length = (int(x) for x in cell.split("x"))
        if time.perf_counter() - start > args.budget_s:
            value = "skipped (time budget)"
        else:
            try:
                value = embedded_cell(model, batch, length)
            except torch.cuda.OutOfMemoryError:
                value = "out of memory"
            except Exception as error:    # report the cell, keep the table
                value = f"failed: {type(error).__name__}: {str(error)[:80]}"
            torch.cuda.empty_cache()
        record(cells[cell], "embedded", value)
        save()


def write_tables(results, device, slug):
    """benchmarks/results/rollout_<device>.json (values per model, cell and engine, kept across runs) and
    the .md table made from it."""
    (ROOT / "benchmarks" / "results" / f"rollout_{slug}.json").write_text(json.dumps(results, indent=1))
    rows = []
    notes = results.get("notes", [])          # free text kept with the values (how a number came about)
    bandwidth = results.get("copy_bandwidth")  # bytes/s
    for key in MODELS:
        for cell, entry in results.get(key, {}).get("cells", {}).items():
            batch, length = (int(x) for x in cell.split("x"))
            floor_ms = entry["floor_bytes"] / bandwidth * 1e3 if bandwidth and "floor_bytes" in entry else None
            steps = [step_ms(batch, entry.get(engine)) for engine in ENGINES]
            over = [f"{ms / floor_ms:.1f}x" if ms and floor_ms else "" for ms in steps]
            rows.append(f"| {results[key]['name']} | {batch} | {length:,} | {fmt(entry.get('vllm', 'not run'))} "
                        f"| {fmt(entry.get('embedded', 'not run'))} | {fmt_ms(steps[0])} | {fmt_ms(steps[1])} "
                        f"| {fmt_ms(floor_ms)} | {over[0]} | {over[1]} | {entry['cache_mib']:,.1f} MiB |")
    text = "\n".join([
        f"# Rollout decode throughput, hybrid vs all-MLA ({device})", "",
        f"bf16, greedy; tokens/s of {DECODE_TOKENS} decode steps with the whole batch decoding (after every "
        "sequence's prefill, after one untimed run of the cell), random prompts of the given context. Cache per "
        "sequence is the analytic size of the KDA states + MLA latents at that context "
        "(`model.cache_bytes_per_sequence`). 'pending': the run ended before that cell; 'not run': no call "
        "has measured it on this device yet. ms/step = batch / tokens/s; floor = the bytes a step must move "
        "(bf16 weights once; per sequence the KDA states read and written, the MLA latents read, at context + "
        f"{DECODE_TOKENS // 2}) at the measured copy bandwidth"
        + (f" ({bandwidth / 1e12:.2f} TB/s)." if bandwidth else " (not measured on this device yet)."), "",
        "| model | batch | context | vLLM tokens/s | embedded tokens/s | vLLM ms/step | embedded ms/step "
        "| floor ms/step | vLLM / floor | embedded / floor | cache per sequence |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, *([""] + notes if notes else [])]) + "\n"
    (ROOT / "benchmarks" / "results" / f"rollout_{slug}.md").write_text(text)
    return text


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-s", type=float, default=300, help="time budget per engine and model")
    parser.add_argument("--engines", default="vllm,embedded",
                        help="which engines to run now ('embedded' needs no vLLM on the machine)")
    parser.add_argument("--embedded-cells", default="64x4096,256x4096,64x32768",
                        help="comma-separated BxL cells for the embedded engine")
    parser.add_argument("--models", default="hybrid,mla",
                        help="which to run now; values of earlier runs on this device are kept")
    args = parser.parse_args()
    for flag, given, allowed in (("--engines", args.engines, list(ENGINES)), ("--models", args.models, list(MODELS)),
                                 ("--embedded-cells", args.embedded_cells, [f"{b}x{l}" for b, l in CELLS])):
        unknown = sorted(set(given.split(",")) - set(allowed))
        if unknown:
            parser.error(f"{flag}: unknown {unknown}; choose from {allowed}")
    device = torch.cuda.get_device_name()
    slug = device.replace(" ", "_")
    results_file = ROOT / "benchmarks" / "results" / f"rollout_{slug}.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    results["copy_bandwidth"] = copy_bandwidth()
    print(f"copy bandwidth: {results['copy_bandwidth'] / 1e12:.2f} TB/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            run_model(key, args, tmp, results.setdefault(key, {}), lambda: write_tables(results, device, slug))
    print(write_tables(results, device, slug))


if __name__ == "__main__":
    main()
