"""GPU correctness of the Triton KDA kernels against the float64 oracle (and fla when installed).

Relative error ||out - ref|| / ||ref|| of the output, the final state and every gradient, with fresh
random inputs each run: < 5e-3 for bf16 inputs, < 1e-4 for fp32, at T in {1, 63, 64, 65, 1000,
4096}, varlen batches of 1 to 64 sequences, with and without initial state.

The gate parameters' gradients dA_log and ddt_bias are sums that can cancel to near zero: they are
also measured against the size of their summed terms (`NAME/sum|term|`, gate_sum_errors), and that
measure, not the plain one, decides pass or fail; the table shows both.

Skipped without CUDA. Also a script: `python tests/gpu/test_kda_triton_gpu.py [--out FILE]` prints
the whole table (ours vs the oracle, fla vs the oracle, ours vs fla).
"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from deltarl.kernels.kda import naive_recurrent_kda  # noqa: E402
from tests.kda_inputs import gate_sum_errors  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

TOL = {torch.bfloat16: 5e-3, torch.float32: 1e-4}
NAMES = ["o", "ht", "dq", "dk", "dv", "dg", "dbeta", "dh0", "dA_log", "ddt_bias"]


def rel(a, b):
    """||a - b|| / ||b||; the absolute ||a - b|| where the reference is exactly zero (dg of a one-token
    sequence without initial state: the decay never acts on anything)."""
    err, size = (a.double() - b.double()).norm(), b.double().norm()
    return (err / size if size > 0 else err).item()


def over_tolerance(errs, dtype):
    """The errors at or above the tolerance; a gate-parameter sum is judged by its term-scaled error."""
    judged = {n: e for n, e in errs.items() if f"{n}/sum|term|" not in errs}
    return {n: e for n, e in judged.items() if not e < TOL[dtype]}


def make_inputs(B, T, H, K, V, dtype, n_seqs=None, with_h0=True, gate=False, seed=None):
    """Fresh random inputs on the GPU: l2-normalised q/k (or raw with in-kernel norm), decays in
    (0, 1), beta in (0, 1). Returns a dict of leaf tensors and cu_seqlens (or None)."""
    dev = "cuda"
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
    rn = lambda *s: torch.randn(*s, device=dev, generator=gen)  # noqa: E731
    cu = None
    N = B
    if n_seqs is not None:
        # random lengths summing to T (each >= 1)
        cuts = torch.randperm(T - 1, device=dev, generator=gen)[: n_seqs - 1].sort().values + 1
        cu = torch.cat([cuts.new_zeros(1), cuts, cuts.new_full((1,), T)]).int()
        N = n_seqs
    x = dict(q=F.normalize(rn(B, T, H, K), dim=-1).to(dtype), k=F.normalize(rn(B, T, H, K), dim=-1).to(dtype),
             v=rn(B, T, H, V).to(dtype), beta=torch.sigmoid(rn(B, T, H)).to(dtype))
    if gate:
        x["g"] = rn(B, T, H, K)
        x["A_log"] = torch.log(torch.rand(H, device=dev, generator=gen) * 15 + 1)
        x["dt_bias"] = rn(H * K) * 0.5 - 2
        x["q"], x["k"] = rn(B, T, H, K).to(dtype), rn(B, T, H, K).to(dtype)
    else:
        x["g"] = -F.softplus(rn(B, T, H, K) - 1.0) * 0.5
    if with_h0:
        x["initial_state"] = rn(N, H, K, V) * 0.1
    return x, cu


def run_impl(fn, x, cu, do, dht, gate, upcast=False):
    """Forward + backward of one implementation; returns outputs and gradients by name."""
    leaves = {n: (t.detach().double() if upcast else t.detach().clone()).requires_grad_() for n, t in x.items()}
    kw = dict(leaves)
    o, ht = fn(**kw, output_final_state=True, cu_seqlens=cu,
               use_qk_l2norm_in_kernel=gate, use_gate_in_kernel=gate)
    loss = (o.double() * do.double()).sum() + (ht.double() * dht.double()).sum()
    loss.backward()
    res = dict(o=o.detach(), ht=ht.detach())
    grad_name = dict(q="dq", k="dk", v="dv", g="dg", beta="dbeta", initial_state="dh0",
                     A_log="dA_log", dt_bias="ddt_bias")
    for n, t in leaves.items():
        res[grad_name[n]] = t.grad
    return res


def ours(**kw):
    from deltarl.kernels.kda.triton_autograd import chunk_kda_triton
    return chunk_kda_triton(**kw)


def oracle(**kw):
    return naive_recurrent_kda(**kw)


def fla_impl(**kw):
    from fla.ops.kda import chunk_kda as fla_chunk_kda
    cu = kw.pop("cu_seqlens")
    return fla_chunk_kda(**kw, cu_seqlens=cu.long() if cu is not None else None)


def check_case(B, T, H, K, V, dtype, n_seqs=None, with_h0=True, gate=False, with_fla=False):
    """Errors of ours (and fla) against the float64 oracle, and ours against fla."""
    x, cu = make_inputs(B, T, H, K, V, dtype, n_seqs, with_h0, gate)
    N = B if cu is None else cu.numel() - 1
    do = torch.randn(B, T, H, V, device="cuda")
    dht = torch.randn(N, H, K, V, device="cuda")
    ref = run_impl(oracle, x, cu, do, dht, gate, upcast=True)
    mine = run_impl(ours, x, cu, do, dht, gate)
    errs = {n: rel(mine[n], ref[n]) for n in ref}
    if gate:
        errs.update({f"{n}/sum|term|": e for n, e in gate_sum_errors(mine, ref, x).items()})
    fla_errs = ours_vs_fla = None
    if with_fla:
        try:
            theirs = run_impl(fla_impl, x, cu, do, dht, gate)
            fla_errs = {n: rel(theirs[n], ref[n]) for n in ref if theirs.get(n) is not None}
            ours_vs_fla = {n: rel(mine[n], theirs[n]) for n in ref if theirs.get(n) is not None}
        except Exception as e:  # fla missing or failing: report, do not hide ours
            fla_errs = {"error": repr(e)[:200]}
    return errs, fla_errs, ours_vs_fla


CASES = [dict(B=2, T=T, H=2, K=128, V=128, with_h0=h0) for T in (1, 63, 64, 65, 1000) for h0 in (False, True)] + [
    dict(B=1, T=4096, H=2, K=128, V=128, with_h0=False),
    dict(B=1, T=4096, H=2, K=128, V=128, with_h0=True),
    dict(B=1, T=300, H=2, K=128, V=128, n_seqs=1, with_h0=True),
    dict(B=1, T=1500, H=2, K=128, V=128, n_seqs=7, with_h0=False),
    dict(B=1, T=4000, H=2, K=128, V=128, n_seqs=64, with_h0=True),
    dict(B=1, T=4000, H=2, K=128, V=128, n_seqs=64, with_h0=False),
    dict(B=2, T=200, H=2, K=128, V=128, with_h0=True, gate=True),
    dict(B=2, T=150, H=2, K=64, V=64, with_h0=True),            # K < 128: one state half, TMA tiles
    dict(B=1, T=300, H=3, K=32, V=48, n_seqs=5, with_h0=True),  # K < the 64-channel tile, V != K
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_against_oracle(case, dtype):
    errs, _, _ = check_case(dtype=dtype, **case)
    bad = over_tolerance(errs, dtype)
    assert not bad, f"relative errors over {TOL[dtype]}: {bad}"


def test_recurrent_decode_pool():
    from deltarl.kernels.kda.triton_recurrent import fused_recurrent_kda_triton
    N, H, K, V, P = 64, 4, 128, 128, 100
    x, _ = make_inputs(1, N, H, K, V, torch.bfloat16, with_h0=False)
    pool = torch.randn(P, H, K, V, device="cuda")
    idx = torch.randperm(P, device="cuda")[:N].int()
    before = pool.clone()
    cu = torch.arange(N + 1, device="cuda", dtype=torch.int32)
    o, _ = fused_recurrent_kda_triton(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=pool,
                                      cu_seqlens=cu, ssm_state_indices=idx, inplace_final_state=True)
    ro, rht = naive_recurrent_kda(*(x[n].double() for n in ("q", "k", "v", "g", "beta")),
                                  initial_state=before[idx.long()].double(), output_final_state=True,
                                  cu_seqlens=cu)
    assert rel(o, ro) < 5e-3
    assert rel(pool[idx.long()], rht) < 1e-5
    untouched = torch.ones(P, dtype=torch.bool, device="cuda")
    untouched[idx.long()] = False
    assert torch.equal(pool[untouched], before[untouched])


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-fla", action="store_true")
    ap.add_argument("--dtypes", default="bf16,fp32")
    args = ap.parse_args()
    dtypes = [dict(bf16=torch.bfloat16, fp32=torch.float32)[d] for d in args.dtypes.split(",")]
    lines = [f"device: {torch.cuda.get_device_name()}", "",
             "| dtype | case | worst ours/oracle (which) | all under tol | fla/oracle worst | ours vs fla (o, dq, dk, dv, dg, dbeta) |",
             "| --- | --- | --- | --- | --- | --- |"]
    print(lines[0], flush=True)
    n_bad = 0
    import time
    for dtype in dtypes:
        # the first call compiles every kernel (about a minute per dtype, more for fp32's ieee dots;
        # fla's first calls autotune for minutes): say so, so a time-out is not mistaken for a hang
        t = time.time()
        check_case(B=1, T=65, H=2, K=128, V=128, dtype=dtype, with_h0=True)
        check_case(B=1, T=65, H=2, K=128, V=128, dtype=dtype, with_h0=True, gate=True)
        print(f"{dtype}: compiled and warmed up in {time.time() - t:.0f} s", flush=True)
        for case in CASES:
            with_fla = not args.no_fla and dtype == torch.bfloat16
            try:
                errs, ferrs, vs = check_case(dtype=dtype, with_fla=with_fla, **case)
            except Exception as e:
                lines.append(f"| {dtype} | {case} | FAILED {e!r:.200} | no | | |")
                n_bad += 1
                continue
            worst = max(errs, key=errs.get)
            bad = over_tolerance(errs, dtype)
            ok = not bad
            n_bad += not ok
            ftxt = vtxt = ""
            if ferrs:
                if "error" in ferrs:
                    ftxt = ferrs["error"]
                else:
                    fw = max(ferrs, key=ferrs.get)
                    ftxt = f"{ferrs[fw]:.2e} ({fw})"
                    vtxt = ", ".join(f"{vs[n]:.1e}" for n in ("o", "dq", "dk", "dv", "dg", "dbeta") if n in vs)
            desc = ",".join(f"{k}={v}" for k, v in case.items() if k not in ("K", "V") or v != 128)
            lines.append(f"| {str(dtype)[6:]} | {desc} | {errs[worst]:.2e} ({worst}) | {'yes' if ok else 'NO: ' + str({n: f'{e:.1e}' for n, e in bad.items()})} | {ftxt} | {vtxt} |")
            print(lines[-1], flush=True)
            if case.get("gate"):
                gates = ", ".join(f"{n} {e:.1e}" for n, e in errs.items() if n.startswith(("dA_log", "ddt_bias")))
                lines.append(f"| {str(dtype)[6:]} | ...gate sums | {gates} | | | |")
                print(lines[-1], flush=True)
    lines.append(f"\n{n_bad} case(s) over tolerance")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
