"""Run every autotune candidate of every chunk-KDA kernel on the GPU, one process each, and check it
against the float64 oracle.

The autotuner launches every candidate on real inputs, so one candidate that faults (an illegal
address ends the CUDA context) or computes wrong values breaks every first call. The CPU tests pin
each candidate under the interpreter (tests/test_kda_triton.py), which checks arithmetic but not what
only the compiled code does. Each process pins one kernel to one candidate and every other kernel to
its first (DELTARL_KDA_CONFIG), runs with CUDA_LAUNCH_BLOCKING=1 so a fault names its launch, and
prints the worst relative error over a few cases. A last process runs the autotuner itself: the one
fault seen so far (docs/kernels.md) appeared only there.

    python tests/gpu/kda_config_sweep.py [--dtype bf16|fp32] [--jobs 8] [--out FILE]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)

# (B, T, H, K, V, n_seqs, with_h0, gate): one sequence crossing a chunk border, a packed ragged batch
# with the gate and L2 norm in the kernel, a dense batch of several chunks
CASES = [(1, 65, 2, 128, 128, None, True, False),
         (1, 1500, 2, 128, 128, 7, True, True),
         (2, 1000, 2, 128, 128, None, False, False)]


def worker(dtype_name):
    """One process: the cases under the pins in DELTARL_KDA_CONFIG; prints a JSON line."""
    import torch
    from tests.gpu.test_kda_triton_gpu import check_case
    dtype = dict(bf16=torch.bfloat16, fp32=torch.float32)[dtype_name]
    worst, which = 0.0, ""
    for B, T, H, K, V, n_seqs, h0, gate in CASES:
        errs, _, _ = check_case(B=B, T=T, H=H, K=K, V=V, dtype=dtype, n_seqs=n_seqs, with_h0=h0, gate=gate)
        name = max(errs, key=errs.get)
        if errs[name] > worst or errs[name] != errs[name]:
            worst, which = errs[name], f"{name} at T={T}"
    print(json.dumps(dict(worst=worst, which=which)))


def run_one(pins, dtype_name):
    """One worker process; pins None runs the autotuner itself (every candidate, in its order)."""
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1", TRITON_PRINT_AUTOTUNING="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if pins is not None:
        env["DELTARL_KDA_CONFIG"] = ",".join(f"{k}={i}" for k, i in pins.items())
    t = time.time()
    p = subprocess.run([sys.executable, __file__, "--worker", "--dtype", dtype_name], env=env,
                       capture_output=True, text=True, timeout=600)
    seconds = time.time() - t
    if p.returncode == 0:
        return dict(json.loads(p.stdout.strip().splitlines()[-1]), ok=True, seconds=seconds)
    # the launch that faulted: the last line of ours in the traceback (under the autotuner, the
    # candidate it was timing), and the error itself
    ours = [ln.strip() for ln in p.stderr.splitlines() if "deltarl/kernels/kda/" in ln]
    tuning = [ln.strip() for ln in p.stdout.splitlines() if ln.startswith("Autotuning kernel")]
    errors = [ln.strip() for ln in p.stderr.splitlines() if "Error" in ln]
    return dict(ok=False, seconds=seconds, where=(tuning or ours or ["?"])[-1],
                error=(errors[-1][:160] if errors else p.stderr[-160:]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.worker:
        return worker(args.dtype)

    import torch
    from deltarl.kernels.kda.triton_utils import TUNED
    import deltarl.kernels.kda.triton_chunk_bwd  # noqa: F401  (registers the kernels in TUNED)
    first = {name: 0 for name in TUNED}
    runs = [("all first", dict(first))]
    for name, (_, configs) in sorted(TUNED.items()):
        for i in range(1, len(configs)):
            runs.append((f"{name} [{i}] {configs[i]}", dict(first, **{name: i})))
    runs.append(("autotuner on (every candidate of every kernel, as a first call does)", None))
    print(f"{len(runs)} runs, {args.jobs} at a time, {args.dtype}", flush=True)
    header = [f"device: {torch.cuda.get_device_name()}, dtype {args.dtype}", "",
              "| candidate (others on their first) | result | worst rel. error (which) | s |",
              "| --- | --- | --- | --- |"]
    rows = {}

    def record(i, r):
        label = runs[i][0]
        if r["ok"]:
            rows[i] = f"| {label} | ok | {r['worst']:.2e} ({r['which']}) | {r['seconds']:.0f} |"
        else:
            rows[i] = f"| {label} | FAILED at `{r['where']}`: {r['error']} | | {r['seconds']:.0f} |"
        print(rows[i], flush=True)
        if args.out:                                          # a run cut short keeps what it found
            with open(args.out, "w") as f:
                f.write("\n".join(header + [rows[j] for j in sorted(rows)]) + "\n")

    # the first run alone compiles every kernel's first candidate into Triton's disk cache; each
    # later run then compiles only the one candidate it pins
    record(0, run_one(runs[0][1], args.dtype))
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_one, pins, args.dtype): i for i, (_, pins) in enumerate(runs) if i > 0}
        for future in as_completed(futures):
            record(futures[future], future.result())


if __name__ == "__main__":
    main()
