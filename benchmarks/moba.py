"""MoBA against dense attention in one MLA layer of Kimi Linear 48B's shape (hidden 2304, 32 heads,
kv_lora_rank 512, qk 128 + 64, v 128), bf16, on the GPU.

    PYTHONPATH=. python3 benchmarks/moba.py [--out DIR] [--sizes 32768,131072,524288] [--variants ...]
    PYTHONPATH=. python3 benchmarks/moba.py --cpu-smoke
    PYTHONPATH=. python3 benchmarks/moba.py --profile moba-512x8@131072 [--out DIR]   # where the time goes

First a correctness check on small shapes: FlexAttention's two ways (compiled, bf16) forward and
backward against the masked path (`padded_moba_attention`) on the same device, and a small all-MLA MoBA
model's cached decoding (float32) against its full forward. Then, per context length T and variant:
- forward+backward of the layer over one packed sequence of T tokens (x [1, T, 2304] -> out, then
  out.backward), median of a few after a warm-up (which compiles FlexAttention);
- a decode step of the layer for 4 sequences over a cache of T tokens (latents random), median of 10.
Variants: `dense` (the model's MLA path: SDPA over the sequence), `moba-4096x3` and `moba-512x8`
(block size x top_k; FlexAttention's gathered way, the model's default on CUDA), `triton-4096x3` and
`triton-512x8` (the Triton row attention, `deltarl/kernels/moba/triton_rows.py`); not by default,
`tiled-4096x3` (the tiled way) and `flex-dense` (one block per sequence: causal attention in FlexAttention, to
tell FlexAttention's kernel from SDPA's apart from MoBA's sparsity). OOM is recorded and the run goes on. DIR/moba_<device>.md is rewritten after every row, so
a run cut short keeps what it measured (to split a run over calls, give each its own --sizes and DIR).
The first MoBA row pays FlexAttention's compilation in its warm-up call, not in its timing.

Inputs are random, so the gate's picks are close to random per query: no matter for the gathered way,
the worst case for the tiled way (a tile of 128 queries then visits nearly every block).

--cpu-smoke: the check on the CPU (float64; FlexAttention through `dense_attend`, the forward also
through eager flex_attention), then the timing loop on a tiny layer, printed, not written.
"""
import argparse
import functools
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import deltarl.model.mla_attention as mla_module  # noqa: E402
from benchmarks.report import previous_report, with_earlier_runs  # noqa: E402
from deltarl.kernels.moba import dense_attend, flex_moba_attention, moba_attention, padded_moba_attention  # noqa: E402
from deltarl.model import KimiLinearCache, KimiLinearConfig, KimiLinearForCausalLM, tiny_config  # noqa: E402
from deltarl.model.batch import TokenLayout, seq_idx_from_cu_seqlens  # noqa: E402
from deltarl.model.cache import MLAState  # noqa: E402
from deltarl.model.mla_attention import KimiMLAAttention  # noqa: E402
from deltarl.model.moba import add_to_block_sums  # noqa: E402

VARIANTS = {"dense": None, "moba-4096x3": (4096, 3, "gathered"), "moba-512x8": (512, 8, "gathered"),
            "tiled-4096x3": (4096, 3, "tiled"),
            "triton-4096x3": (4096, 3, "triton"), "triton-512x8": (512, 8, "triton"),     # triton_rows.py
            "flex-dense": (2**30, 1, "tiled")}     # one block per sequence: causal attention in FlexAttention
DEFAULT_VARIANTS = "dense,moba-4096x3,moba-512x8,triton-4096x3,triton-512x8"
LAYER = 3                    # 0-based index of the MLA layer in a 4-layer config (1-based layer 4)
DECODE_BATCH = 4
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# --- correctness ---------------------------------------------------------------------------------
def check(device, lines):
    """Append the check's lines; raise if an error is over its bound (main records it and still times)."""
    cpu = device == "cpu"
    lengths, H, block_size, top_k = ([37, 150, 93], 2, 16, 2) if cpu else ([700, 1300, 257], 4, 128, 3)
    # bf16 only on the GPU: each dtype compiles FlexAttention's kernels again; a wrong tile or pick
    # shows as an O(1) error, far above bf16's rounding
    bounds = {torch.float64: 1e-12} if cpu else {torch.bfloat16: 5e-2}
    for dtype, bound in bounds.items():
        for impl in ("gathered", "tiled") + (() if cpu else ("triton",)):
            errors = flex_errors(device, dtype, lengths, H, block_size, top_k, impl)
            way = impl if impl == "triton" else f"flex {impl}"
            lines.append(f"- {way} vs masked path, {lengths} tokens, block {block_size}, top-{top_k}, "
                         f"{str(dtype)[6:]}: max error / max |ref| of o, dq, dk, dv = "
                         + ", ".join(f"{e:.1e}" for e in errors))
            if max(errors) > bound:
                raise AssertionError(lines[-1])
    dtype = torch.float64 if cpu else torch.float32
    torch.manual_seed(0)
    config = tiny_config(num_layers=2, kda_every=1, moba_config={"block_size": 8, "top_k": 2, "moba_layers": [1, 2]})
    model = KimiLinearForCausalLM(config).to(device=device, dtype=dtype).eval()
    ids = torch.randint(4, 128, (3, 90), device=device)
    with torch.no_grad():
        full = model(ids).logits
        cache = KimiLinearCache(config)
        steps = [model(ids[:, :30], past_key_values=cache, use_cache=True).logits]
        steps += [model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits for t in range(30, 90)]
    error = float((torch.cat(steps, 1) - full).abs().max())
    lines.append(f"- cached MoBA decoding vs full forward (all-MLA tiny model, block 8, top-2, {str(dtype)[6:]}): "
                 f"max |logit difference| {error:.1e}")
    if error > (1e-10 if cpu else 1e-3):
        raise AssertionError(lines[-1])


def flex_errors(device, dtype, lengths, H, block_size, top_k, impl):
    """max |flex - masked path| / max |masked path| of o, dq, dk, dv on random packed inputs."""
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    T = int(cu[-1])
    # the layer's head sizes (qk 128 + 64, v 128), so the GPU compiles its kernels once, here
    inputs = [torch.randn(1, T, H, d, device=device, dtype=dtype, requires_grad=True) for d in (192, 192, 128)]
    cotangent = torch.randn(1, T, H, 128, device=device, dtype=dtype)
    scale = 192 ** -0.5
    attend = dense_attend if device == "cpu" else None

    def run(fn):
        o = fn(*inputs)
        return [t.detach().double() for t in (o, *torch.autograd.grad((o * cotangent).sum(), inputs))]

    reference = run(lambda q, k, v: padded_moba_attention(q, k, v, cu, block_size, top_k, scale))
    if impl == "triton":
        got = run(lambda q, k, v: moba_attention(q, k, v, cu, block_size, top_k, scale, impl="triton"))
    else:
        got = run(lambda q, k, v: flex_moba_attention(q, k, v, cu, block_size, top_k, scale, impl=impl,
                                                      attend=attend))
    return [float((a - b).abs().max() / b.abs().max()) for a, b in zip(got, reference)]


# --- timing --------------------------------------------------------------------------------------
def layer_config(moba, tiny):
    """A 4-layer config whose layer 4 is MLA, MoBA'd when moba = (block_size, top_k, impl) is given."""
    dims = (dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, head_dim=16, kv_lora_rank=32,
                 qk_nope_head_dim=16,
                 qk_rope_head_dim=8, v_head_dim=16) if tiny else {})
    moba_config = None if moba is None else {"block_size": moba[0], "top_k": moba[1], "moba_layers": [LAYER + 1]}
    return KimiLinearConfig(num_hidden_layers=4, vocab_size=1000, moba_config=moba_config, **dims)


def clock(fn, reps, warmup, device):
    """Median seconds of `reps` calls after `warmup` calls."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def time_forward_backward(layer, T, device, dtype, reps):
    x = torch.randn(1, T, layer.q_proj.in_features, device=device, dtype=dtype, requires_grad=True)
    cu = torch.tensor([0, T], dtype=torch.int32, device=device)
    layout = TokenLayout(cu_seqlens=cu, seq_idx=seq_idx_from_cu_seqlens(cu, T))
    grad = torch.randn_like(x)

    def step():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x, layout).backward(grad)
    return clock(step, reps, warmup=1, device=device)


def time_decode(layer, config, T, device, dtype):
    """A decode step of `layer` for DECODE_BATCH sequences over a random cache of T tokens."""
    B = DECODE_BATCH
    cache = KimiLinearCache(config)
    cache.valid = torch.ones(B, T, dtype=torch.bool, device=device)
    latent = torch.randn(B, T + 64, layer.kv_lora_rank, device=device, dtype=dtype)
    k_pe = torch.randn(B, T + 64, layer.rope_dim, device=device, dtype=dtype)
    state = MLAState(latent, k_pe, T)
    if layer.moba is not None:
        state.block_sums = add_to_block_sums(None, latent[:, :T], k_pe[:, :T], cache.valid, layer.moba[0])
    cache.layers[LAYER] = state
    x = torch.randn(B, 1, layer.q_proj.in_features, device=device, dtype=dtype)
    one = torch.ones(B, 1, dtype=torch.bool, device=device)

    @torch.no_grad()
    def step():
        cache.append_valid(one)
        layer(x, TokenLayout(cache=cache))
    return clock(step, reps=10, warmup=2, device=device)


def measure(name, T, device, dtype, tiny, reps):
    """(forward+backward s or 'OOM', decode s or 'OOM', peak GiB) of one variant at T tokens."""
    moba = VARIANTS[name]
    config = layer_config(moba, tiny)
    torch.manual_seed(0)
    layer = KimiMLAAttention(config, LAYER).to(device=device, dtype=dtype)
    impl = "gathered" if moba is None else moba[2]
    mla_module.moba_attention = functools.partial(moba_attention, impl=impl)     # the variant's way
    results, peaks = [], []
    for timer in (lambda: time_forward_backward(layer, T, device, dtype, reps),
                  lambda: time_decode(layer, config, T, device, dtype)):
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            results.append(timer())
        except torch.cuda.OutOfMemoryError:
            results.append("OOM")
        peaks.append(torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan"))
    return (*results, peaks[0])            # the peak of forward+backward, the memory training needs


def profile(variant, T, path):
    """The CUDA kernels of one forward+backward of `variant` at T tokens, by total GPU time, beside the
    step's wall time: where the time goes, and how much of the step no kernel covers (launches, host
    syncs, Python)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    moba = VARIANTS[variant]
    layer = KimiMLAAttention(layer_config(moba, tiny=False), LAYER).to(device="cuda", dtype=torch.bfloat16)
    mla_module.moba_attention = functools.partial(moba_attention, impl="gathered" if moba is None else moba[2])
    wall = time_forward_backward(layer, T, "cuda", torch.bfloat16, reps=2)      # compiles, then times
    x = torch.randn(1, T, layer.q_proj.in_features, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cu = torch.tensor([0, T], dtype=torch.int32, device="cuda")
    layout = TokenLayout(cu_seqlens=cu, seq_idx=seq_idx_from_cu_seqlens(cu, T))
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        layer(x, layout).backward(torch.randn_like(x))
        torch.cuda.synchronize()
    events = prof.key_averages()
    gpu_total = sum(e.self_device_time_total for e in events) / 1e3
    lines = [f"# {variant} at {T:,} tokens, forward+backward ({torch.cuda.get_device_name()})", "",
             f"wall {wall * 1e3:.1f} ms (median of 2); kernels {gpu_total:.1f} ms in all", "",
             events.table(sort_by="self_device_time_total", row_limit=40)]
    text = "\n".join(lines)
    print(text, flush=True)
    with open(path, "w") as f:
        f.write(text + "\n")


def table(rows):
    """Markdown rows: ms and the ratio dense / variant (how many times faster) per size."""
    dense = {r[0]: r for r in rows if r[1] == "dense"}
    out = ["| tokens | variant | fwd+bwd ms | speed-up vs dense | decode step ms | speed-up vs dense | fwd+bwd peak GiB |",
           "|---:|---|---:|---:|---:|---:|---:|"]

    def ms(x):
        return x if isinstance(x, str) else f"{x * 1e3:.2f}"

    def ratio(base, x):
        return "" if isinstance(base, str) or isinstance(x, str) or base is None else f"{base / x:.2f}x"

    for T, name, fb, dec, peak in rows:
        base = dense.get(T)
        out.append(f"| {T:,} | {name} | {ms(fb)} | {ratio(base and base[2], fb)} | {ms(dec)} | "
                   f"{ratio(base and base[3], dec)} | {peak:.1f} |")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--sizes", default="32768,131072,524288")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--profile", metavar="VARIANT@TOKENS", action="append", default=[],
                        help="instead of the table: a kernel profile of one forward+backward, e.g. moba-512x8@131072")
    args = parser.parse_args()
    if args.profile:
        for item in args.profile:
            variant, _, T = item.partition("@")
            if variant not in VARIANTS or not T.isdigit():
                parser.error(f"--profile {item!r}: want VARIANT@TOKENS with VARIANT one of {list(VARIANTS)}")
            name = torch.cuda.get_device_name().replace(" ", "_")
            profile(variant, int(T), os.path.join(args.out, f"moba_profile_{variant}_{T}_{name}.txt"))
        return
    smoke = args.cpu_smoke
    device = "cpu" if smoke else "cuda"
    name = "cpu-smoke" if smoke else torch.cuda.get_device_name()
    command = "--cpu-smoke" if smoke else f"--sizes {args.sizes} --variants {args.variants}"
    header = [f"# MoBA vs dense, one MLA layer ({name})", "",
              f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}; `PYTHONPATH=. python3 benchmarks/moba.py {command}`",
              "", "## Correctness", ""]
    torch.manual_seed(0)
    failed = False
    try:
        check(device, header)
    except AssertionError as error:
        failed = True
        header.append(f"- **CHECK FAILED** (over its bound): {error}")
    print("\n".join(header), flush=True)
    sizes = [512, 2048] if smoke else [int(s) for s in args.sizes.split(",")]
    if smoke:                              # the tiny layer's blocks, so MoBA is sparse at these sizes
        VARIANTS.update({"moba-4096x3": (128, 3, "gathered"), "moba-512x8": (32, 8, "gathered"),
                         "tiled-4096x3": (128, 3, "tiled")})
    rows = []
    path = os.path.join(args.out, f"moba_{name.replace(' ', '_')}.md")
    # this device's committed results (they travel with the tree to the GPU machine) go below the new table
    previous = "" if smoke else previous_report(os.path.join(RESULTS, os.path.basename(path)))
    for T in sizes:
        for variant in args.variants.split(","):
            if smoke:            # the tiled way needs FlexAttention's backward, the triton way CUDA
                if variant.startswith(("tiled", "triton")):
                    continue
            reps = 3 if T <= 131072 else 1
            fb, dec, peak = measure(variant, T, device, torch.float32 if smoke else torch.bfloat16, smoke, reps)
            rows.append((T, variant, fb, dec, peak))
            print(table(rows)[-1], flush=True)
            if not smoke:
                os.makedirs(args.out, exist_ok=True)
                body = ["", "## Time", "", "Decode: a step for 4 sequences. Speed-up: dense time / variant time.", "",
                        *table(rows)]
                with open(path, "w") as f:
                    f.write(with_earlier_runs("\n".join(header + body) + "\n", previous))
    print("\n".join(["", *table(rows)]))
    if not smoke:
        print(f"wrote {path}")
    if failed:
        sys.exit("the correctness check failed: see the results' Correctness section")


if __name__ == "__main__":
    main()
