#!/bin/sh
# device run: the KDA kernels' benchmark with its per-kernel profile, GPU correctness (ours / fla /
# float64 oracle) and the autotune-candidate sweep, as separate parts for separate device calls:
#   sh benchmarks/gpu_kda_session.sh bench [ARGS]  # timings + profile + decode line (7+ min on a fresh machine:
#                                            #   every kernel autotunes at every new shape)
#   sh benchmarks/gpu_kda_session.sh check [--no-fla]  # bf16 with fla's outputs beside ours, then fp32
#                                            #   (~12 min with fla, which autotunes at every new shape;
#                                            #   ~4 min without)
#   sh benchmarks/gpu_kda_session.sh sweep   # every autotune candidate alone, then the autotuner (~5 min)
# ARGS after `bench` go to benchmarks/kda_kernels.py (e.g. --shapes 1,2,3,4 --no-profile --no-torch).
# Everything is written under $OUT as it goes, so a call cut by its time limit keeps what it measured.
# To time older versions of our kernels in the same run (a column each), first, here, per version:
#   mkdir -p .abbase/NAME && git archive <commit> kernels | tar -x -C .abbase/NAME
# and carry [".kdakit", ".abbase"]; `bench` passes --baseline NAME=.abbase/NAME for each (git-excluded).
# fla 0.6.0 comes either from the gpu-kit (`../shared/gpu-kit/prepare core`, then its install.sh puts it
# in /tmp/site) or, lighter (8 MB, one call), from .kdakit/site: fla/, fla_core + flash_linear_attention
# dist-info and einops unpacked from ~/.cache/gpu-kit/core-*.tar.xz, carried with carry=[".kdakit"].
export PYTHONPATH=$PWD/.kdakit/site:/tmp/site:$PWD PYTHONUNBUFFERED=1
PART=${1:?usage: gpu_kda_session.sh bench|check|sweep}
shift
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
# Triton's autotune results (~/.triton/cache/*/*.autotune.json, a few KB) go back in $OUT/tritontune.tgz;
# copied here as .tritontune.tgz (git-excluded) and carried, they let the next fresh machine compile
# only each kernel's chosen candidate instead of tuning them all (entries are keyed by kernel source
# and arguments, so those of changed kernels are simply not used)
if [ -f .tritontune.tgz ]; then mkdir -p ~/.triton && tar -xzf .tritontune.tgz -C ~/.triton && echo "autotune results restored"; fi
trap '(cd ~/.triton 2>/dev/null && find cache -name "*.autotune.json" | tar -czf $OUT/tritontune.tgz -T -)' EXIT
# the work stops KDA_SECONDS (default 540) after the start, so a device call of 600 s still saves the cache
DEADLINE=$(( $(date +%s) + ${KDA_SECONDS:-540} ))
left() { echo $(( DEADLINE - $(date +%s) > 1 ? DEADLINE - $(date +%s) : 1 )); }
case "$PART" in
  bench)
    BASE=""
    for d in .abbase/*/kernels; do [ -d "$d" ] && BASE="$BASE --baseline $(basename $(dirname $d))=$(dirname $d)"; done
    echo "baselines:${BASE:- none}"
    timeout $(left) python3 benchmarks/kda_kernels.py $BASE "$@" --out $OUT/bench.md 2>&1 | tee $OUT/bench.log ;;
  check)
    timeout $(left) python3 tests/gpu/test_kda_triton_gpu.py --dtypes bf16 "$@" --out $OUT/correctness_bf16_fla.md 2>&1 | tee $OUT/check_bf16_fla.log
    timeout $(left) python3 tests/gpu/test_kda_triton_gpu.py --dtypes fp32 --no-fla --out $OUT/correctness_fp32.md 2>&1 | tee $OUT/check_fp32.log ;;
  sweep)
    timeout $(left) python3 tests/gpu/kda_config_sweep.py --dtype bf16 --jobs 8 --out $OUT/sweep_bf16.md 2>&1 | tee $OUT/sweep.log ;;
  *)
    echo "unknown part $PART: bench, check or sweep" >&2; exit 2 ;;
esac
