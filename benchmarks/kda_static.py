"""Static resources of the Triton KDA kernels on Hopper, without a GPU: registers, spills, shared memory.

Each kernel is compiled for sm_90 (Triton's offline compile, GPUTarget("cuda", 90, 32)) under the launch
configurations we consider, and ptxas -v reports registers per thread and spill bytes. Spills and
occupancy are the first things to read when a kernel is slower than its bytes and FLOPs say; this runs
on the CPU machine, so kernel changes can be checked between GPU sessions.

    python benchmarks/kda_static.py [--dtype bf16|fp32] [--out FILE]

The configurations are each kernel's autotune candidates (kernels/kda/triton_chunk_*.py). Writes
benchmarks/results/kda_static_sm90_<dtype>.md.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from deltarl.kernels.kda import triton_chunk_bwd as bwd  # noqa: E402
from deltarl.kernels.kda import triton_chunk_fwd as fwd  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
K = V = 128


def signature(fn, pointers, constexprs):
    """Triton signature of `fn`: pointer args typed from `pointers` (name -> '*bf16' ...), names in
    `constexprs` as constexpr, `scale` fp32, every other argument i32."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = pointers[name]
        else:
            sig[name] = "fp32" if name == "scale" else "i32"
    return sig


def resources(fn, pointers, constexprs, num_warps, num_stages):
    """(registers per thread, spill store bytes, spill load bytes, shared memory bytes, Hopper wgmma
    instructions, Ampere-style mma.sync instructions) on sm_90; the last two are static PTX counts."""
    src = ASTSource(fn, signature(fn, pointers, constexprs), constexprs)
    compiled = triton.compile(src, target=TARGET, options=dict(num_warps=num_warps, num_stages=num_stages))
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(compiled.asm["ptx"])
    wgmma = compiled.asm["ptx"].count("wgmma.mma_async")
    mma = compiled.asm["ptx"].count("mma.sync")
    report = subprocess.run([PTXAS, "--gpu-name=sm_90a", "-v", f.name, "-o", os.devnull],
                            capture_output=True, text=True).stderr
    os.unlink(f.name)
    regs = int(re.search(r"Used (\d+) registers", report).group(1))
    spill_st, spill_ld = (int(x) for x in re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads",
                                                      report).groups())
    return regs, spill_st, spill_ld, compiled.metadata.shared, wgmma, mma


class Fixed:
    """A kernel launched with one fixed configuration (4 warps, 1 stage), in the autotuner's shape."""
    def __init__(self, fn):
        self.fn, self.configs = fn, [triton.Config({}, num_warps=4, num_stages=1)]


def kernels(dtype):
    """(name, autotuned kernel, pointer types, constexprs); the configs are the kernel's autotune candidates."""
    x, f32, i32 = f"*{dtype}", "*fp32", "*i32"
    prec = "ieee" if dtype == "fp32" else "tf32"
    ptr = lambda names, t: {n: t for n in names.split()}  # noqa: E731
    gate_ptrs = {**ptr("q k qn kn", x), **ptr("g G A_log dt_bias", f32), **ptr("cu_seqlens chunk_seq chunk_pos", i32)}
    diag_ptrs = {**ptr("qs ks beta", x), **ptr("G Akk_d Aqk", f32), **ptr("cu_seqlens chunk_seq chunk_pos", i32)}
    solve_ptrs = {**ptr("qs ks beta", x), **ptr("G Akk_d Aqk Tm", f32), **ptr("cu_seqlens chunk_seq chunk_pos", i32)}
    wy_ptrs = {**ptr("qs ks v beta w qg kg", x), **ptr("G Tm u", f32), **ptr("cu_seqlens chunk_seq chunk_pos", i32)}
    desc = f"tensordesc<{dtype}[64, 64]>"                     # triton_chunk_fwd.tile_desc
    state_ptrs = {**ptr("kg w", desc), **ptr("h", x), **ptr("u G v_new h0 ht", f32),
                  **ptr("cu_seqlens chunk_offsets", i32)}
    out_ptrs = {**ptr("qg o h", x), **ptr("v_new Aqk", f32), **ptr("cu_seqlens chunk_seq chunk_pos", i32)}
    dvl_ptrs = {**ptr("do", x), **ptr("Aqk dv_local", f32), **ptr("cu_seqlens chunk_seq chunk_pos", i32)}
    bstate_ptrs = {**ptr("qg kg w", desc), **ptr("do dh", x), **ptr("G dv_local dv_new dht dh0", f32),
                   **ptr("cu_seqlens chunk_offsets", i32)}
    inter_k_ptrs = {**ptr("q k beta do h dh", x), **ptr("G Tm v_new dv_new dq_p dk_p dG_p dT_p dbeta_kp", f32),
                    **ptr("cu_seqlens chunk_seq chunk_pos", i32)}
    inter_v_ptrs = {**ptr("v beta do dv", x), **ptr("Tm v_new dv_new dT_p dbeta_kp dA dP dbeta_p", f32),
                    **ptr("cu_seqlens chunk_seq chunk_pos", i32)}
    bintra_ptrs = {**ptr("q k beta dq dk", x), **ptr("G dA dP dq_p dk_p dG_p dG dbeta_cb", f32),
                   **ptr("cu_seqlens chunk_seq chunk_pos", i32)}
    dg_ptrs = {**ptr("g dG A_log dt_bias dg dbias_p dAlog_p", f32), **ptr("cu_seqlens chunk_seq chunk_pos", i32)}
    l2_ptrs = {**ptr("q_raw k_raw dq dk", x), **ptr("dqn dkn", f32), **ptr("cu_seqlens chunk_seq chunk_pos", i32)}
    kv = dict(K=K, V=V, PREC=prec)
    base = dict(kv, BK=128)
    dot = dict(DOT=tl.float32 if dtype == "fp32" else tl.bfloat16)
    return [
        ("fwd gate", Fixed(fwd._fwd_gate_kernel), gate_ptrs,
         dict(K=K, BK=128, USE_L2NORM=True, USE_GATE=True, HAS_DT_BIAS=True)),
        ("fwd diag", fwd._fwd_diag_kernel, diag_ptrs, dict(K=K, BK=128)),
        ("fwd solve", fwd._fwd_solve_kernel, solve_ptrs, dict(K=K, PREC=prec)),
        ("fwd wy", fwd._fwd_wy_kernel, wy_ptrs, dict(kv, **dot)),
        ("fwd state", fwd._fwd_state_kernel, state_ptrs, dict(kv, **dot, HAS_H0=True, STORE_HT=True)),
        ("fwd output", fwd._fwd_output_kernel, out_ptrs, dict(base, **dot)),
        ("bwd dv local", bwd._bwd_dv_local_kernel, dvl_ptrs, dict(V=V, PREC=prec, **dot)),
        ("bwd state", bwd._bwd_state_kernel, bstate_ptrs, dict(kv, **dot, HAS_DHT=True, STORE_DH0=True)),
        ("bwd inter key", bwd._bwd_inter_key_kernel, inter_k_ptrs, dict(kv, **dot, BC=bwd.INTER_BC)),
        ("bwd inter value", bwd._bwd_inter_value_kernel, inter_v_ptrs, dict(V=V, PREC=prec)),
        ("bwd intra", bwd._bwd_intra_kernel, bintra_ptrs, dict(K=K, BC_MIN=bwd.BC_MIN, PREC=prec)),
        ("bwd dg", bwd._bwd_dg_kernel, dg_ptrs, dict(K=K, BC_MIN=bwd.BC_MIN, USE_GATE=True, HAS_DT_BIAS=True)),
        ("bwd l2norm", Fixed(bwd._bwd_l2norm_kernel), l2_ptrs, dict(K=K, BK=128)),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--only", default=None, help="comma-separated kernel names (as in the table)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    lines = [f"# KDA kernels on sm_90 (static, {args.dtype} inputs, K = V = 128)", "",
             "`python benchmarks/kda_static.py`: Triton 3.6 offline compile for sm_90 + `ptxas -v`; no GPU involved.",
             "Registers are per thread (255 max); spills in bytes per thread; shared memory per program;",
             "wgmma / mma.sync: matrix instructions in the PTX (static counts: Hopper's warpgroup MMA, and the",
             "older warp-level MMA Triton falls back to for small tiles, e.g. an M of 16).", "",
             "| kernel | num_warps | num_stages | block | registers | spill stores | spill loads | shared KB "
             "| wgmma / mma.sync |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    known = [name for name, *_ in kernels(args.dtype)]
    unknown = sorted(set(args.only.split(",")) - set(known)) if args.only else []
    if unknown:
        ap.error(f"--only: unknown kernel(s) {unknown}; choose from {known}")
    for name, tuner, ptrs, consts in kernels(args.dtype):
        if args.only and name not in args.only.split(","):
            continue
        for cfg in tuner.configs:
            warps, stages, extra = cfg.num_warps, cfg.num_stages, cfg.kwargs
            try:
                regs, st, ld, shared, wgmma, mma = resources(tuner.fn, ptrs, {**consts, **extra}, warps, stages)
                row = f"{regs} | {st} | {ld} | {shared / 1024:.0f} | {wgmma} / {mma}"
            except Exception as error:                     # e.g. out of shared memory: say so, go on
                row = f"failed: {type(error).__name__}: {str(error)[:60]} | | | |"
            lines.append(f"| {name} | {warps} | {stages} | {extra or ''} | {row} |")
            print(lines[-1], flush=True)
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"kda_static_sm90_{args.dtype}.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(out)


if __name__ == "__main__":
    main()
