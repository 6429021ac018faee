"""Time chunkwise KDA: ours (Triton), fla's chunk_kda and the PyTorch chunk path, in one run.

    python benchmarks/kda_kernels.py [--no-torch] [--no-profile] [--baseline [NAME=]DIR ...] [--shapes 0,1,..]
                                     [--out FILE]

--baseline NAME=DIR (repeatable) times another version of our kernels in the same run, as column NAME
("base" when no name is given): DIR holds a `kernels/kda` package, e.g. from
`git archive <commit> kernels | tar -x -C DIR` (git-excluded, carried to the device), so a kernel change
is judged against its predecessors on the same machine, each change on its own. --shapes picks shapes
of the table by index (the profile and decode line come after the first one picked), so a fresh
machine's autotuning can be split over device calls.

bf16 inputs, float32 gates, K = V = 128, chunk 64. `triton.testing.do_bench` (median, after its
warm-up), forward and forward+backward. Prints ms, achieved TFLOP/s and each version's ratio to fla,
plus the decode step (256 sequences, H=32, K=V=128, state pool updated in place) against the time to
read and write the state once at the measured copy bandwidth, a per-kernel profile (torch.profiler)
of one forward+backward of each version, and the host time to issue one call. Writes
benchmarks/results/kda_kernels_<device>.md.

FLOPs (per token and head, C = 64): the matrix products of the chunk algorithm,
  forward  = 2*C*K (Akk) + 2*C*K (Aqk) + 2*C*K (w) + 2*C*V (u) + 2*C*V (Aqk v) + 6*K*V (w h,
             k^T v_new, q h)  [lower-triangular C x C products counted in full]
  backward = 2 x forward (the usual convention), so forward+backward = 3 x forward.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.rollout import copy_bandwidth  # noqa: E402
from deltarl.kernels.kda import chunk_kda_torch  # noqa: E402
from deltarl.kernels.kda.triton_autograd import chunk_kda_triton  # noqa: E402
from deltarl.kernels.kda.triton_recurrent import fused_recurrent_kda_triton  # noqa: E402

C = 64


def flops_fwd(ntok, H, K, V):
    return ntok * H * (6 * C * K + 4 * C * V + 6 * K * V)


def make(B, T, H, K, V, lens=None, dev="cuda"):
    q = F.normalize(torch.randn(B, T, H, K, device=dev), dim=-1).bfloat16()
    k = F.normalize(torch.randn(B, T, H, K, device=dev), dim=-1).bfloat16()
    v = torch.randn(B, T, H, V, device=dev).bfloat16()
    g = -F.softplus(torch.randn(B, T, H, K, device=dev) - 1) * 0.5
    beta = torch.sigmoid(torch.randn(B, T, H, device=dev)).bfloat16()
    cu = None
    if lens is not None:
        cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=dev)
    return [q, k, v, g, beta], cu


def load_baseline(root, name):
    """chunk_kda_triton of the kernels/kda package under `root`, imported as its own package `kda_<name>`
    (the package uses relative imports only), so several versions run beside ours in one process."""
    import importlib
    import importlib.util
    # trees from before the `deltarl` package kept the kernels at the top level
    candidates = [os.path.join(root, "deltarl", "kernels", "kda"), os.path.join(root, "kernels", "kda")]
    pkg = next((c for c in candidates if os.path.isfile(os.path.join(c, "__init__.py"))), None)
    if pkg is None:
        raise SystemExit(f"--baseline {name}={root}: no deltarl/kernels/kda (or kernels/kda) package under {root}")
    spec = importlib.util.spec_from_file_location(f"kda_{name}", os.path.join(pkg, "__init__.py"),
                                                  submodule_search_locations=[pkg])
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"kda_{name}"] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"kda_{name}.triton_autograd").chunk_kda_triton


def parse_baselines(items):
    """['NAME=DIR' or 'DIR', ...] -> {name: dir}; a bare DIR is named 'base'."""
    out = {}
    for item in items or []:
        name, sep, root = item.partition("=")
        name, root = (name, root) if sep else ("base", item)
        if not name.isidentifier() or name in ("ours", "fla", "torch") or name in out:
            raise SystemExit(f"--baseline {item!r}: the name must be a new identifier other than ours, fla, torch")
        out[name] = root
    return out


def get_fla():
    try:
        from fla.ops.kda import chunk_kda as fla_chunk_kda
        return fla_chunk_kda
    except Exception as e:  # not installed here
        print(f"fla unavailable: {e!r}")
        return None


def bench(impl, xs, cu, backward, name):
    leaves = [x.detach().clone().requires_grad_(backward) for x in xs]
    do = torch.randn_like(xs[2])

    def run():
        o, _ = impl(*leaves, cu)
        if backward:
            o.backward(do)

    try:
        return triton.testing.do_bench(run, warmup=50, rep=200, grad_to_none=leaves if backward else None,
                                       return_mode="median")
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return float("nan")
    except Exception as e:
        print(f"{name} failed: {e!r:.300}")
        return float("nan")


def kernel_profile(impls, shape=(1, 4096, 32, 128, 128), iters=5):
    """Per-kernel GPU time of one forward+backward (mean over `iters`), for each implementation: the
    profile that says where ours loses to fla. Returns markdown lines."""
    from torch.profiler import ProfilerActivity, profile
    xs, cu = make(*shape)
    lines = []
    for name, impl in impls.items():
        if name == "torch":
            continue
        leaves = [x.detach().clone().requires_grad_() for x in xs]
        do = torch.randn_like(xs[2])
        for _ in range(3):                                   # compile / autotune outside the profile
            impl(*leaves, cu)[0].backward(do)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                impl(*leaves, cu)[0].backward(do)
            torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        events.sort(key=lambda e: -e.device_time_total)
        total = sum(e.device_time_total for e in events) / iters
        lines += ["", f"Kernels of one fwd+bwd, {name}, shape {shape[:4]} (us per call; total {total:.0f} us):", "",
                  "| kernel | us | share |", "| --- | ---: | ---: |"]
        for e in events[:14]:
            t = e.device_time_total / iters
            lines.append(f"| {e.key[:70]} | {t:.0f} | {t / total:.0%} |")
    return lines


def host_lines(impls, shape=(1, 4096, 32, 128, 128), iters=20):
    """CPU time to issue one forward and one forward+backward, per implementation, with nothing
    waiting on the GPU: when it is near or above the GPU time, the GPU idles between launches (or a
    host sync inside the call made the CPU wait). Returns markdown lines."""
    xs, cu = make(*shape)
    lines = ["", f"Host time to issue one call at {shape[:4]} (us, mean of {iters}; the GPU time is the table's):", "",
             "| impl | fwd | fwd+bwd |", "| --- | ---: | ---: |"]
    for name, impl in impls.items():
        if name == "torch":
            continue
        leaves = [x.detach().clone().requires_grad_() for x in xs]
        do = torch.randn_like(xs[2])
        times = []
        for backward in (False, True):
            for _ in range(3):
                o = impl(*leaves, cu)[0]
                if backward:
                    o.backward(do)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(iters):
                o = impl(*leaves, cu)[0]
                if backward:
                    o.backward(do)
            times.append((time.perf_counter() - t0) / iters * 1e6)
            torch.cuda.synchronize()
        lines.append(f"| {name} | {times[0]:.0f} | {times[1]:.0f} |")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-profile", action="store_true", help="skip the per-kernel profile")
    ap.add_argument("--baseline", action="append", metavar="[NAME=]DIR",
                    help="a directory holding another kernels/kda to time beside ours, as column NAME (repeatable)")
    ap.add_argument("--shapes", default=None, help="comma-separated indices into the shape list (default: all)")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev_name = torch.cuda.get_device_name()
    fla = get_fla()
    impls = {"ours": lambda q, k, v, g, b, cu: chunk_kda_triton(q, k, v, g, b, cu_seqlens=cu)}
    for name, root in parse_baselines(args.baseline).items():
        base = load_baseline(root, name)
        impls[name] = lambda q, k, v, g, b, cu, base=base: base(q, k, v, g, b, cu_seqlens=cu)
    if fla is not None:
        impls["fla"] = lambda q, k, v, g, b, cu: fla(q, k, v, g, b, cu_seqlens=cu.long() if cu is not None else None)
    if not args.no_torch:
        impls["torch"] = lambda q, k, v, g, b, cu: chunk_kda_torch(q, k, v, g, b, cu_seqlens=cu)

    gen = torch.Generator().manual_seed(1)
    packed = torch.randint(256, 769, (64,), generator=gen).tolist()
    shapes = [((1, 4096, 32, 128, 128), None), ((1, 16384, 16, 128, 128), None), ((8, 2048, 16, 128, 128), None),
              ((1, 65536, 8, 128, 128), None), ((1, sum(packed), 16, 128, 128), packed)]
    if args.shapes is not None:
        picked = args.shapes.split(",")
        bad = [i for i in picked if not (i.isdigit() and int(i) < len(shapes))]
        if bad:
            ap.error(f"--shapes: {bad} not in 0..{len(shapes) - 1}")
        shapes = [shapes[int(i)] for i in picked]
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   f"kda_kernels_{dev_name.replace(' ', '_').replace('/', '_')}.md")
    rows, extra = [], []
    for (B, T, H, K, V), lens in shapes:
        xs, cu = make(B, T, H, K, V, lens)
        res = {}
        for name, impl in impls.items():
            print(f"  {name} ...", flush=True)
            if name == "torch" and B * T * H > 4096 * 32:
                res[name] = (float("nan"), float("nan"))       # the PyTorch path: minutes and tens of GB here
                continue
            res[name] = (bench(impl, xs, cu, False, name), bench(impl, xs, cu, True, name))
            torch.cuda.empty_cache()
        desc = f"({B}, {T}, {H}, {K})" if lens is None else f"packed 64 seqs, {B * T} tok, H={H}"
        rows.append((desc, flops_fwd(B * T, H, K, V), res))
        write_report(out, dev_name, impls, rows, extra)        # a run cut short keeps what it measured
        if len(rows) == 1:
            # the profile and the decode line right after the first shape: a first run on a fresh
            # machine spends minutes autotuning every shape, and these say the most per minute
            if not args.no_profile:
                extra += kernel_profile({n: f for n, f in impls.items() if n != "torch"})
                extra += host_lines(impls)
            extra += decode_line()
            write_report(out, dev_name, impls, rows, extra)
    print(open(out).read())


def decode_line():
    """Decode step for 256 sequences, H=32, K=V=128 (state pool in place) vs reading and writing the
    state once at the measured copy bandwidth."""
    N, H, K, V = 256, 32, 128, 128
    pool = torch.randn(N + 64, H, K, V, device="cuda")
    idx = torch.randperm(N + 64, device="cuda")[:N].int()
    xs, _ = make(1, N, H, K, V)
    cu = torch.arange(N + 1, device="cuda", dtype=torch.int32)
    t_dec = triton.testing.do_bench(lambda: fused_recurrent_kda_triton(*xs, initial_state=pool, cu_seqlens=cu,
                                                                       ssm_state_indices=idx, inplace_final_state=True),
                                    warmup=50, rep=200, return_mode="median")
    bw = copy_bandwidth()                                    # bytes read + written per second
    state_bytes = N * H * K * V * 4
    t_floor = 2 * state_bytes / bw * 1e3
    return ["", f"Decode step, 256 sequences, H=32, K=V=128, fp32 state pool in place: {t_dec * 1e3:.1f} us; "
            f"state {state_bytes / 2**20:.0f} MiB read + written at the measured copy bandwidth "
            f"{bw / 1e12:.2f} TB/s = {t_floor * 1e3:.1f} us; ratio {t_dec / t_floor:.2f} (target <= 1.5)."]


def write_report(out, dev_name, impls, rows, extra):
    others = [n for n in impls if n not in ("fla", "torch")]            # each gets its ratio to fla
    lines = [f"# KDA kernels on {dev_name}", "",
             "bf16 inputs, float32 gates and states, K = V = 128, chunk 64; `triton.testing.do_bench` median (ms).",
             "TFLOP/s from the FLOP count in benchmarks/kda_kernels.py (fwd+bwd = 3 x fwd).", "",
             "| shape (B, T, H, K=V) | " + " | ".join(f"{n} fwd ms" for n in impls) + " | "
             + " | ".join(f"{n} fwd+bwd ms" for n in impls) + " | ours TFLOP/s fwd / fwd+bwd | "
             + " | ".join(f"{n}/fla fwd | {n}/fla fwd+bwd" for n in others) + " |",
             "| --- " * (2 + 2 * len(impls) + 2 * len(others)) + "|"]
    for desc, fl, res in rows:
        o = res["ours"]
        f = res.get("fla", (float("nan"), float("nan")))
        lines.append(f"| {desc} | " + " | ".join(f"{res[n][0]:.3f}" for n in impls) + " | "
                     + " | ".join(f"{res[n][1]:.3f}" for n in impls)
                     + f" | {fl / o[0] / 1e9:.1f} / {3 * fl / o[1] / 1e9:.1f} | "
                     + " | ".join(f"{res[n][0] / f[0]:.2f} | {res[n][1] / f[1]:.2f}" for n in others) + " |")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        fh.write("\n".join(lines + extra) + "\n")


if __name__ == "__main__":
    main()
