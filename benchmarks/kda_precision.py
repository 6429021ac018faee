"""Error budget of bf16 in chunkwise KDA: which intermediates and matmul operands can be bf16 before the
output drifts from the float64 result (the guide for the Triton kernels' storage and dot dtypes).

The chunk algorithm in float64, with a rounding to bf16 or fp32 at each chosen storage point (T = (I+A)^-1,
w, u, v_new, Aqk, the per-chunk state h) and matmul operand (T X, T Y, w S, qg h, Aqk v_new, kg^T v_new),
on bf16 inputs. Forward only; relative error ||o - o_ref|| / ||o_ref|| against unrounded float64 math,
every output stored in bf16 as the kernels do.

    python benchmarks/kda_precision.py [--T 4096 --H 4]      (CPU, about a minute)
"""
import argparse
import os

import torch
import torch.nn.functional as F

C = 64
STORED = ("T", "w", "u", "v_new", "Aqk", "h")
OPERANDS = ("T@X", "T@Y", "w@S", "qg@h", "Aqk@v_new", "kg^T@v_new")


def to_bf16(x):
    return x.to(torch.bfloat16).to(torch.float64)


def to_fp32(x):
    return x.to(torch.float32).to(torch.float64)


def inputs(T, H, K, V, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    return dict(q=to_bf16(F.normalize(rn(T, H, K), dim=-1)), k=to_bf16(F.normalize(rn(T, H, K), dim=-1)),
                v=to_bf16(rn(T, H, V)), beta=to_bf16(torch.sigmoid(rn(T, H))),
                g=to_fp32(-F.softplus(rn(T, H, K) - 1) * 0.5))


def chunk_kda(x, bf16_stored=(), bf16_operands=(), exact=False):
    """Output [H, T, V]. exact: no rounding at all; otherwise fp32 everywhere except the named bf16 sites."""
    keep = (lambda name: lambda t: t) if exact else None
    store = keep or (lambda name: to_bf16 if name in bf16_stored else to_fp32)
    operand = keep or (lambda name: to_bf16 if name in bf16_operands else to_fp32)

    def mm(name, a, b):
        return operand(name)(a) @ operand(name)(b)

    q, k, v, beta, g = (x[n].transpose(0, 1) for n in ("q", "k", "v", "beta", "g"))    # [H, T, *]
    H, T, K = q.shape
    scale = K ** -0.5
    S = torch.zeros(H, K, v.shape[-1], dtype=torch.float64)
    out = []
    for c0 in range(0, T, C):
        qc, kc, vc, bc = q[:, c0:c0 + C], k[:, c0:c0 + C], v[:, c0:c0 + C], beta[:, c0:c0 + C, None]
        G = g[:, c0:c0 + C].cumsum(1)                                                    # [H, C, K]
        decay = (G[:, :, None] - G[:, None]).clamp(max=0).exp()                         # [H, C, C, K], i >= j used
        Akk = (torch.einsum("hic,hjc,hijc->hij", kc, kc, decay) * bc).tril(-1)
        Aqk = store("Aqk")((torch.einsum("hic,hjc,hijc->hij", qc, kc, decay) * scale).tril())
        Tm = store("T")(torch.linalg.inv(torch.eye(C, dtype=torch.float64) + Akk))
        w = store("w")(mm("T@X", Tm, bc * kc * G.exp()))
        u = store("u")(mm("T@Y", Tm, bc * vc))
        h = store("h")(S)
        v_new = store("v_new")(u - mm("w@S", w, S))
        o = mm("qg@h", qc * G.exp() * scale, h) + mm("Aqk@v_new", Aqk, v_new)
        out.append(o if exact else to_bf16(o))
        kg = kc * (G[:, -1:] - G).exp()
        S = G[:, -1].exp()[..., None] * S + mm("kg^T@v_new", kg.transpose(1, 2), v_new)
    return torch.cat(out, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--H", type=int, default=4)
    args = ap.parse_args()
    x = inputs(args.T, args.H, 128, 128)
    ref = chunk_kda(x, exact=True)
    err = lambda o: ((o - ref).norm() / ref.norm()).item()  # noqa: E731
    rows = [("fp32 everywhere (bf16 output only)", err(chunk_kda(x)))]
    rows += [(f"bf16 storage of {n}", err(chunk_kda(x, bf16_stored={n}))) for n in STORED]
    rows += [(f"bf16 operands of {n}", err(chunk_kda(x, bf16_operands={n}))) for n in OPERANDS]
    rows += [("bf16 storage of everything, bf16 operands everywhere",
              err(chunk_kda(x, bf16_stored=set(STORED), bf16_operands=set(OPERANDS)))),
             ("bf16 T, w, h; bf16 operands of T@X, w@S, qg@h, kg^T@v_new; the rest fp32",
              err(chunk_kda(x, bf16_stored={"T", "w", "h"}, bf16_operands={"T@X", "w@S", "qg@h", "kg^T@v_new"})))]
    lines = [f"# bf16 error budget of chunkwise KDA (forward, T={args.T}, H={args.H}, K=V=128, float64 math)", "",
             "Relative error of the output against unrounded float64 math; inputs bf16, gates fp32, output bf16.", "",
             "| rounding | relative error |", "| --- | ---: |"] + [f"| {name} | {e:.2e} |" for name, e in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    out = os.path.join(os.path.dirname(__file__), "results", "kda_precision_cpu.md")
    with open(out, "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
