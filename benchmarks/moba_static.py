"""Static resources of the MoBA Triton row kernels (`deltarl/kernels/moba/triton_rows.py`) on Hopper, without
a GPU: each kernel compiled for sm_90 at MLA's head sizes (qk 192, v 128) under candidate launch settings,
with registers, spills and shared memory from `ptxas -v` (as benchmarks/kda_static.py does for KDA).

    python benchmarks/moba_static.py [--out FILE]

Writes benchmarks/results/moba_static_sm90_bf16.md.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.kda_static import resources  # noqa: E402
from deltarl.kernels.moba import triton_rows as rows  # noqa: E402

DIMS = dict(DK=192, DV=128, BDK=256, BDV=128)
LAUNCHES = [(4, 2), (8, 2), (8, 3)]                  # (num_warps, num_stages)
BLOCK = 512                                          # tokens per MoBA block


def kernels():
    """(name, kernel, pointer types, constexprs) at block size 512 (8 key tiles of 64)."""
    ptr = lambda names, t: {n: t for n in names.split()}  # noqa: E731
    common = {**ptr("Q K V DO O", "*bf16"), **ptr("LSE DELTA DQ DKEY DVAL", "*fp32"),
              **ptr("ROW_Q ROW_G G_START SEG_START", "*i32")}
    tiles = lambda bm_bn: dict(BM=bm_bn[0], BN=bm_bn[1])  # noqa: E731
    return [("fwd", rows._rows_fwd, common, dict(DIMS, **tiles(rows.FWD_TILES), KEY_TILES=BLOCK // rows.FWD_TILES[1])),
            ("bwd dq", rows._rows_bwd_dq, common, dict(DIMS, **tiles(rows.DQ_TILES), KEY_TILES=BLOCK // rows.DQ_TILES[1])),
            ("bwd dk dv", rows._rows_bwd_dkdv, common, dict(DIMS, **tiles(rows.DKDV_TILES)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "moba_static_sm90_bf16.md"))
    args = ap.parse_args()
    lines = ["# MoBA Triton row kernels on sm_90 (static, bf16, qk 192 padded to 256, v 128)", "",
             "`python benchmarks/moba_static.py`: Triton offline compile for sm_90 + `ptxas -v`; no GPU involved. "
             "Registers per thread (255 max), spills in bytes per thread, shared memory per program; "
             f"the kernels launch with {rows.LAUNCH}; (rows, keys) per tile: fwd {rows.FWD_TILES}, dq "
             f"{rows.DQ_TILES}, dk dv {rows.DKDV_TILES}; blocks of {BLOCK} tokens.", "",
             "| kernel | num_warps | num_stages | registers | spill stores | spill loads | shared KB | wgmma / mma.sync |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, fn, ptrs, consts in kernels():
        for warps, stages in LAUNCHES:
            try:
                regs, st, ld, shared, wgmma, mma = resources(fn, ptrs, consts, warps, stages)
                row = f"{regs} | {st} | {ld} | {shared / 1024:.0f} | {wgmma} / {mma}"
            except Exception as error:                     # e.g. out of shared memory: say so, go on
                row = f"failed: {type(error).__name__}: {str(error)[:80]} | | | |"
            lines.append(f"| {name} | {warps} | {stages} | {row} |")
            print(lines[-1], flush=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
