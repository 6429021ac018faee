"""Error budget of bf16 in chunkwise KDA, forward and backward: which stored intermediates and which
matmul operands can be bf16 before the output or a gradient drifts from float64. This is the guide for
the Triton kernels' storage and dot dtypes, measured on the CPU.

The chunk algorithm runs in float64 (autograd gives the backward) with a rounding at every storage
point and at the operands of every matmul, forward and backward, set by a plan:
  bf16; tf32 (what a tensor-core dot with input_precision="tf32" reads of an fp32 operand: the low 13
  mantissa bits dropped, i.e. truncated); fp32; exact.
A matmul a @ b has three roundings: its forward operands, and the operands of each backward product
(da = g b^T and db = a^T g run in different kernels, at different precisions). A storage point rounds
the value and, separately, the gradient the backward keeps of it.

The plan `ours` mirrors kernels/kda/triton_chunk_{fwd,bwd}.py for bf16 inputs; the others change one
thing at a time. Inputs as in tests/gpu/test_kda_triton_gpu.py; o and the gradients of q, k, v, beta
are rounded to bf16 (the input dtype), those of g and h0 to fp32, as the kernels return them. Error:
||x - x_ref|| / ||x_ref|| against unrounded float64 math on the same (bf16-rounded) inputs.

Modelling shortcuts (each can only overstate the error of a plan): a gradient stored in bf16 (dh)
also feeds the reverse recurrence, where the kernel keeps it in fp32 registers; the diagonal 16 x 16
intra blocks are exact (the kernel sums them in fp32).

    python benchmarks/kda_precision.py [--T 4096 --H 2]      (CPU, a few minutes)
"""
import argparse
import os

import torch
import torch.nn.functional as F

C = 64           # chunk
B16 = 16         # intra-chunk block


def _tf32(x):
    bits = x.to(torch.float32).view(torch.int32) & -8192                # keep 10 of 23 mantissa bits
    return bits.view(torch.float32).to(torch.float64)


FORMATS = {
    "exact": lambda x: x,
    "fp32": lambda x: x.to(torch.float32).to(torch.float64),
    "tf32": _tf32,
    "bf16": lambda x: x.to(torch.bfloat16).to(torch.float64),
}


class Round(torch.autograd.Function):
    """A storage point: the value in format `fwd`, its gradient in format `bwd`."""

    @staticmethod
    def forward(ctx, x, fwd, bwd):
        ctx.bwd = bwd
        return FORMATS[fwd](x)

    @staticmethod
    def backward(ctx, g):
        return FORMATS[ctx.bwd](g), None, None


class MatMul(torch.autograd.Function):
    """a @ b reading its operands in format `fwd`; the backward products da = g b^T and db = a^T g read
    theirs in formats `da` and `db` (b and a as they were stored, i.e. before the forward's rounding)."""

    @staticmethod
    def forward(ctx, a, b, fwd, da, db):
        ctx.save_for_backward(a, b)
        ctx.fmt = (da, db)
        f = FORMATS[fwd]
        return f(a) @ f(b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        fa, fb = (FORMATS[x] for x in ctx.fmt)
        return fa(g) @ fa(b).mT, fb(a).mT @ fb(g), None, None, None


class UnitLowerInverse(torch.autograd.Function):
    """T = (I + A)^-1 for strictly lower A; backward dA = -T^T (dT T^T) with operands in format `bwd`."""

    @staticmethod
    def forward(ctx, A, bwd):
        T = torch.linalg.inv(torch.eye(A.shape[-1], dtype=A.dtype) + A)
        ctx.save_for_backward(T)
        ctx.bwd = bwd
        return T

    @staticmethod
    def backward(ctx, g):
        (T,) = ctx.saved_tensors
        f = FORMATS[ctx.bwd]
        return -(f(T).mT @ f(f(g) @ f(T).mT)), None


# every site a plan sets: storage points (value, gradient) and matmuls (forward, da, db)
STORES = ("G", "Aqk", "T", "w", "u", "qg", "kg", "h", "v_new", "S_next")
MATMULS = ("intra", "T@X", "T@Y", "w@S", "qg@h", "Aqk@v_new", "kg^T@v_new")


def plan_ours():
    """The Triton kernels for bf16 inputs (key path in bf16, value path and state in fp32, tf32 dots)."""
    p = {s: ("fp32", "fp32") for s in STORES}
    p.update(w=("bf16", "fp32"), qg=("bf16", "fp32"), kg=("bf16", "fp32"))
    p.update({
        "intra": ("tf32", "tf32", "tf32"),            # fwd blocks kernel / bwd intra kernel
        "T@X": ("bf16", "tf32", "tf32"),              # fwd wy kernel (T.to(DOT)) / bwd inter, X recomputed
        "T@Y": ("tf32", "tf32", "tf32"),              # fwd wy / bwd inter
        "w@S": ("bf16", "tf32", "bf16"),              # fwd state / dw: bwd inter reads h; dS: bwd state
        "qg@h": ("bf16", "tf32", "bf16"),             # fwd output / dqg: bwd inter; dh: bwd state
        "Aqk@v_new": ("tf32", "tf32", "tf32"),        # fwd output / dAqk: bwd inter; dv: dv_local kernel
        "kg^T@v_new": ("bf16", "tf32", "bf16"),       # fwd state / dkg: bwd inter; dv_new: bwd state
        "inverse": "tf32",                            # dAkk = -T^T dT T^T in bwd inter
    })
    return p


def plans():
    """(label, plan) pairs: the references, ours, then ours with one change at a time."""
    ours = plan_ours()
    fp32 = {**{s: ("fp32", "fp32") for s in STORES}, **{m: ("fp32",) * 3 for m in MATMULS}, "inverse": "fp32"}
    every_bf16 = {**{s: ("bf16", "bf16") for s in STORES}, **{m: ("bf16",) * 3 for m in MATMULS},
                  "inverse": "bf16", "G": ("fp32", "fp32")}
    bwd_dots_bf16 = {m: (ours[m][0], "bf16", "bf16") for m in MATMULS if m != "intra"}
    return [
        ("fp32 storage, fp32 dots (bf16 inputs and outputs only)", fp32),
        ("**ours** (kernels at HEAD: w, qg, kg bf16; key-path dots bf16; the rest fp32 / tf32)", ours),
        ("ours with fp32 instead of tf32 dots", {n: tuple("fp32" if f == "tf32" else f for f in v)
                                                 if isinstance(v, tuple) else "fp32" for n, v in ours.items()}),
        ("ours + h stored in bf16", {**ours, "h": ("bf16", "fp32")}),
        ("ours + dh (state gradient) stored in bf16", {**ours, "S_next": ("fp32", "bf16")}),
        ("ours + h and dh in bf16", {**ours, "h": ("bf16", "fp32"), "S_next": ("fp32", "bf16")}),
        ("ours + bf16 operands in every backward dot but the intra ones", {**ours, **bwd_dots_bf16, "inverse": "bf16"}),
        ("ours + bf16 intra dots (Akk, Aqk and their backward)", {**ours, "intra": ("bf16",) * 3}),
        ("ours + T stored in bf16", {**ours, "T": ("bf16", "fp32")}),
        ("ours + u, v_new, Aqk stored in bf16 (the value path)",
         {**ours, "u": ("bf16", "fp32"), "v_new": ("bf16", "fp32"), "Aqk": ("bf16", "fp32")}),
        ("ours + dv_new stored in bf16", {**ours, "v_new": ("fp32", "bf16")}),
        ("ours + h, dh in bf16 + bf16 operands in every backward dot but the intra ones (the next kernels)",
         {**ours, **bwd_dots_bf16, "inverse": "bf16", "h": ("bf16", "fp32"), "S_next": ("fp32", "bf16")}),
        ("everything bf16 (storage, gradients, every dot; G fp32)", every_bf16),
    ]


def inputs(T, H, K, V, seed=0, shift=1.0, h0_scale=0.1):
    """As tests/gpu/test_kda_triton_gpu.py: unit q, k; decays exp(-softplus(x - shift) / 2) (a larger
    shift: longer memory, so the state carries more of the output); bf16 inputs."""
    gen = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    bf16 = FORMATS["bf16"]
    return dict(q=bf16(F.normalize(rn(H, T, K), dim=-1)), k=bf16(F.normalize(rn(H, T, K), dim=-1)),
                v=bf16(rn(H, T, V)), beta=bf16(torch.sigmoid(rn(H, T))),
                g=FORMATS["fp32"](-F.softplus(rn(H, T, K) - shift) * 0.5), h0=FORMATS["fp32"](rn(H, K, V) * h0_scale),
                do=bf16(rn(H, T, V)), dht=FORMATS["fp32"](rn(H, K, V)))


def intra(q, k, G, mm):
    """One chunk's Akk (strictly lower, no beta) and Aqk (lower, no scale), [H, C, C], in 16 x 16 blocks
    as the kernels build them: diagonal blocks from exact pair decays, the blocks left of the diagonal
    as matmuls of factors decayed to and from the first row of the row block."""
    H, n, _ = q.shape
    rows_kk, rows_qk = [], []
    for I in range(0, n, B16):
        sl_i = slice(I, I + B16)
        Gi = G[:, sl_i]                                                      # [H, 16, K]
        pair = Gi[:, :, None] - Gi[:, None]                                  # [H, i, j, K]
        lower = torch.ones(B16, B16, dtype=torch.bool).tril()[None, :, :, None]
        decay = torch.where(lower, pair, -torch.inf).exp()
        kk = [torch.einsum("hic,hjc,hijc->hij", k[:, sl_i], k[:, sl_i], decay).tril(-1)]
        qk = [torch.einsum("hic,hjc,hijc->hij", q[:, sl_i], k[:, sl_i], decay)]
        Gr = G[:, I:I + 1]                                                   # reference row [H, 1, K]
        for J in range(0, I, B16):
            sl_j = slice(J, J + B16)
            kj = (k[:, sl_j] * (Gr - G[:, sl_j]).exp()).mT                   # [H, K, 16]
            kk.insert(J // B16, mm("intra", k[:, sl_i] * (Gi - Gr).exp(), kj))
            qk.insert(J // B16, mm("intra", q[:, sl_i] * (Gi - Gr).exp(), kj))
        pad = torch.zeros(H, B16, n - I - B16, dtype=q.dtype)
        rows_kk.append(torch.cat(kk + [pad], -1))
        rows_qk.append(torch.cat(qk + [pad], -1))
    return torch.cat(rows_kk, 1), torch.cat(rows_qk, 1)


def chunk_kda(x, plan):
    """o [H, T, V] and the final state [H, K, V]; the leaves of x carry the gradients."""
    exact = plan is None
    store = (lambda n, t: t) if exact else (lambda n, t: Round.apply(t, *plan[n]))
    mm = (lambda n, a, b: a @ b) if exact else (lambda n, a, b: MatMul.apply(a, b, *plan[n]))
    inverse = (lambda A: UnitLowerInverse.apply(A, "exact")) if exact else \
        (lambda A: UnitLowerInverse.apply(A, plan["inverse"]))
    q, k, v, beta, g = x["q"], x["k"], x["v"], x["beta"], x["g"]
    H, T, K = q.shape
    scale = K ** -0.5
    S = x["h0"]
    out = []
    for c0 in range(0, T, C):
        qc, kc, vc, bc = q[:, c0:c0 + C], k[:, c0:c0 + C], v[:, c0:c0 + C], beta[:, c0:c0 + C, None]
        G = store("G", g[:, c0:c0 + C].cumsum(1))                            # [H, C, K]
        Akk, Aqk = intra(qc, kc, G, mm)
        Aqk = store("Aqk", Aqk * scale)
        Tm = store("T", inverse(Akk * bc))
        w = store("w", mm("T@X", Tm, bc * kc * G.exp()))
        u = store("u", mm("T@Y", Tm, bc * vc))
        qg = store("qg", qc * G.exp() * scale)
        kg = store("kg", kc * (G[:, -1:] - G).exp())
        h = store("h", S)
        v_new = store("v_new", u - mm("w@S", w, h))
        out.append(mm("qg@h", qg, h) + mm("Aqk@v_new", Aqk, v_new))
        S = store("S_next", G[:, -1, :, None].exp() * S + mm("kg^T@v_new", kg.mT, v_new))
    return torch.cat(out, 1), S


OUTPUT_FORMAT = dict(o="bf16", dq="bf16", dk="bf16", dv="bf16", dbeta="bf16", dg="fp32", dh0="fp32")


def run(x, plan):
    """{name: tensor} of o and every input gradient, rounded as the kernels return them."""
    leaves = {n: x[n].clone().requires_grad_() for n in ("q", "k", "v", "beta", "g", "h0")}
    o, ht = chunk_kda(leaves, plan)
    ((o * x["do"]).sum() + (ht * x["dht"]).sum()).backward()
    res = dict(o=o.detach(), **{"d" + n: t.grad for n, t in leaves.items()})
    if plan is not None:
        res = {n: FORMATS[OUTPUT_FORMAT[n]](t) for n, t in res.items()}
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--H", type=int, default=2)
    ap.add_argument("--shift", type=float, default=1.0, help="decay exp(-softplus(x - shift) / 2)")
    ap.add_argument("--h0-scale", type=float, default=0.1)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "kda_precision_cpu.md"))
    args = ap.parse_args()
    if args.T <= 0 or args.T % C:
        ap.error(f"--T must be a positive multiple of {C}, got {args.T}")
    torch.set_num_threads(os.cpu_count() or 1)
    x = inputs(args.T, args.H, 128, 128, shift=args.shift, h0_scale=args.h0_scale)
    ref = run(x, None)
    names = list(OUTPUT_FORMAT)
    lines = [f"# bf16 error budget of chunkwise KDA (T={args.T}, H={args.H}, K=V=128, float64 math)", "",
             "`python benchmarks/kda_precision.py` (CPU). Relative error against unrounded float64 math on the",
             "same bf16 inputs, for o and every gradient; each plan rounds storage points and matmul operands",
             "(forward and backward) as the script's docstring says. The bound for bf16 inputs is 5e-3.",
             f"Inputs: unit q, k; decays exp(-softplus(x - {args.shift:g}) / 2) per token and channel; initial state",
             f"N(0, {args.h0_scale:g}^2). Columns: o, then the gradients as the kernels return them.", "",
             "| plan | " + " | ".join(names) + " | worst |", "|---|" + "---:|" * (len(names) + 1)]
    for label, plan in plans():
        res = run(x, plan)
        errs = [((res[n] - ref[n]).norm() / ref[n].norm()).item() for n in names]
        lines.append(f"| {label} | " + " | ".join(f"{e:.2e}" for e in errs) + f" | {max(errs):.2e} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as fh:
        fh.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
