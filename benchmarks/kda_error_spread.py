"""Spread of the KDA kernels' errors over fresh inputs: one case of the GPU correctness test
(tests/gpu/test_kda_triton_gpu.py) drawn with many seeds, ours and earlier versions of our kernels
(and fla when installed) on the same inputs, against the float64 oracle.

A check run draws one input per case, so one error near the bound cannot say whether a kernel change
moved the errors or the draw was unlucky; the median and maximum over seeds can.

    python benchmarks/kda_error_spread.py [--case N] [--runs 20] [--dtype bf16|fp32]
                                          [--baseline NAME=DIR ...] [--out FILE]

--case indexes CASES of the GPU test (default: the gated case, with the in-kernel gate and L2 norm);
--baseline as in benchmarks/kda_kernels.py. Prints and writes a markdown table: per implementation and
output, the median and maximum relative error and how many seeds went over the bound.
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.kda_kernels import get_fla, load_baseline, parse_baselines  # noqa: E402
from tests.gpu.test_kda_triton_gpu import CASES, TOL, fla_impl, make_inputs, oracle, ours, rel, run_impl  # noqa: E402
from tests.kda_inputs import gate_sum_errors  # noqa: E402


def errors_of(impls, case, dtype, seed):
    """{impl: {output: relative error}} on one draw of the case's inputs."""
    x, cu = make_inputs(dtype=dtype, seed=seed, **case)
    gate = case.get("gate", False)
    N = case["B"] if cu is None else cu.numel() - 1
    gen = torch.Generator(device="cuda").manual_seed(seed + 1)
    do = torch.randn(case["B"], case["T"], case["H"], case["V"], device="cuda", generator=gen)
    dht = torch.randn(N, case["H"], case["K"], case["V"], device="cuda", generator=gen)
    ref = run_impl(oracle, x, cu, do, dht, gate, upcast=True)
    out = {}
    for name, fn in impls.items():
        res = run_impl(fn, x, cu, do, dht, gate)
        errs = {n: rel(res[n], ref[n]) for n in ref if res.get(n) is not None}
        if gate:        # the gate-parameter sums are judged against the size of their terms
            errs.update(gate_sum_errors(res, ref, x))
        out[name] = errs
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", type=int, default=next(i for i, c in enumerate(CASES) if c.get("gate")))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--baseline", action="append", metavar="[NAME=]DIR")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not 0 <= args.case < len(CASES):
        ap.error(f"--case: {args.case} not in 0..{len(CASES) - 1} (the CASES of tests/gpu/test_kda_triton_gpu.py)")
    if args.runs < 1:
        ap.error(f"--runs: {args.runs}, need at least 1")
    dtype = dict(bf16=torch.bfloat16, fp32=torch.float32)[args.dtype]
    case = CASES[args.case]
    impls = {"ours": ours}
    for name, root in parse_baselines(args.baseline).items():
        impls[name] = load_baseline(root, name)
    if get_fla() is not None:               # fla 0.6 takes the same in-kernel gate and L2 norm arguments
        impls["fla"] = fla_impl
    runs = [errors_of(impls, case, dtype, seed) for seed in range(args.runs)]
    bound = TOL[dtype]
    lines = [f"# Error spread on {torch.cuda.get_device_name()}", "",
             f"`python benchmarks/kda_error_spread.py --case {args.case} --runs {args.runs} --dtype {args.dtype}`: "
             f"case {case}, {args.runs} seeds, relative error against the float64 oracle (bound {bound:g}; "
             "dA_log / ddt_bias against the size of their terms).", "",
             "| impl | output | median | max | seeds over the bound |", "| --- | --- | ---: | ---: | ---: |"]
    for name in impls:
        for out in runs[0][name]:
            vals = [r[name][out] for r in runs]
            lines.append(f"| {name} | {out} | {statistics.median(vals):.2e} | {max(vals):.2e} | "
                         f"{sum(v >= bound for v in vals)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
