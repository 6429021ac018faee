#!/bin/sh
# One GPU session for MoBA (issue 22) and fault tolerance (issue 24); needs the core+vllm gpu-kit in /tmp/site.
#   sh benchmarks/gpu_faults_moba_session.sh moba SIZES    # FlexAttention check + benchmarks/moba.py at SIZES
#   sh benchmarks/gpu_faults_moba_session.sh moba-profile moba-512x8@131072 ...   # kernel profiles (--profile)
#   sh benchmarks/gpu_faults_moba_session.sh kill          # gpu_single.yaml, 20 steps, its vLLM engine killed after step 6
set -x
export PYTHONPATH=/tmp/site:.
case "$1" in
moba)
  mkdir -p $OUT/moba
  (python3 -m pytest --version && timeout 200 python3 -m pytest -o addopts="" -q -x tests/gpu/test_moba_gpu.py) \
    > $OUT/moba/gpu_test.log 2>&1
  echo "gpu test rc=$?"; tail -3 $OUT/moba/gpu_test.log
  timeout ${MOBA_TIMEOUT:-380} python3 benchmarks/moba.py --out $OUT/moba --sizes ${2:-32768,131072} > $OUT/moba/moba.log 2>&1
  echo "moba rc=$?"; tail -30 $OUT/moba/moba.log
  ;;
moba-profile)
  mkdir -p $OUT/moba
  shift
  for item in "$@"; do set -- "$@" --profile "$item"; shift; done
  timeout ${MOBA_TIMEOUT:-380} python3 benchmarks/moba.py --out $OUT/moba "$@" > $OUT/moba/profile.log 2>&1
  echo "moba profile rc=$?"; tail -60 $OUT/moba/profile.log
  ;;
kill)
  mkdir -p $OUT/kill
  WARM=checkpoints/arithmetic-warmup-vllm
  # Triton keeps autotune results on disk, so the replacement engine does not redo the first one's ~2 min
  export TRITON_CACHE_AUTOTUNING=1
  sh benchmarks/gpu_cache.sh restore
  timeout 570 python3 benchmarks/engine_kill.py --budget-s ${BUDGET_S:-500} --steps ${STEPS:-20} --kill-after ${KILL_AFTER:-6} --out $OUT/kill model.path=$WARM \
    tokenizer=$WARM rollout.enforce_eager=true
  echo "engine_kill rc=$?"
  tail -5 $OUT/kill/run.log
  sh benchmarks/gpu_cache.sh save
  ;;
esac
