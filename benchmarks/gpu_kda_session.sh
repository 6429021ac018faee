#!/bin/sh
# device run: GPU correctness (ours / fla / float64 oracle) and the benchmark.
# Budget the first run generously: our kernels autotune (every candidate config compiles: several
# minutes for bf16 + fp32 on a fresh machine; before autotuning it was ~1 min bf16, ~2 min fp32);
# fla autotunes on its first calls. Run it as one device call of ~5 min (timeout_s 300+), or the four
# steps as separate calls on a warm machine.
# fla 0.6.0 comes either from the gpu-kit (`../shared/gpu-kit/prepare core`, then its install.sh puts it
# in /tmp/site) or, lighter (8 MB, one call), from .kdakit/site: fla/, fla_core + flash_linear_attention
# dist-info and einops unpacked from ~/.cache/gpu-kit/core-*.tar.xz, carried with carry=[".kdakit"].
export PYTHONPATH=$PWD/.kdakit/site:/tmp/site:$PWD PYTHONUNBUFFERED=1
# `sh benchmarks/gpu_kda_session.sh 1` runs the bf16 check and the benchmark, `... 2` the fla comparison and
# the fp32 check (two device calls on one warm machine); no argument runs all four.
PART=${1:-all}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
if [ "$PART" != 2 ]; then
  python3 tests/gpu/test_kda_triton_gpu.py --dtypes bf16 --no-fla --out $OUT/correctness_bf16.md 2>&1 | tee $OUT/check_bf16.log
  python3 benchmarks/kda_kernels.py --out $OUT/bench.md 2>&1 | tee $OUT/bench.log
fi
if [ "$PART" != 1 ]; then
  python3 tests/gpu/test_kda_triton_gpu.py --dtypes bf16 --out $OUT/correctness_bf16_fla.md 2>&1 | tee $OUT/check_bf16_fla.log
  python3 tests/gpu/test_kda_triton_gpu.py --dtypes fp32 --no-fla --out $OUT/correctness_fp32.md 2>&1 | tee $OUT/check_fp32.log
fi
