#!/bin/sh
# The multi-GPU session (issue 19), on the largest kind lent; needs the core+vllm gpu-kit in /tmp/site.
#   sh benchmarks/gpu_scaling_session.sh scaling "1,2,4,8"   # benchmarks/scaling.py, colocated and split, 1.03B
#   sh benchmarks/gpu_scaling_session.sh zero3               # the 12.5B model under ZeRO-3 on every GPU
#   sh benchmarks/gpu_scaling_session.sh curve STEPS         # configs/gpu_multi.yaml from the warm-up: reward curve
set -x
export PYTHONPATH=/tmp/site:.
export TRITON_CACHE_AUTOTUNING=1
NAME=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
N=$(python3 -c "import torch; print(torch.cuda.device_count())")
case "$1" in
scaling)
  timeout ${TIMEOUT:-580} python3 benchmarks/scaling.py --gpus ${2:-1,2,4,8} --placements ${PLACEMENTS:-colocated,split} \
    --steps ${STEPS:-8} > $OUT/scaling.log 2>&1
  echo "scaling rc=$?"
  cp benchmarks/results/scaling_$NAME.md $OUT/ 2>/dev/null
  mkdir -p $OUT/scaling && cp benchmarks/results/scaling_$NAME/* $OUT/scaling/ 2>/dev/null
  tail -20 $OUT/scaling.log
  ;;
zero3)
  timeout ${TIMEOUT:-580} python3 benchmarks/scaling.py --config configs/zero3_big_gpu.yaml --gpus $N \
    --placements colocated --prompts-per-gpu 8 --steps ${STEPS:-5} rollout.num_workers=$N learner.num_workers=$N \
    > $OUT/zero3.log 2>&1
  echo "zero3 rc=$?"
  cp benchmarks/results/scaling_$NAME.md $OUT/ 2>/dev/null
  tail -20 $OUT/zero3.log
  ;;
curve)
  WARM=checkpoints/arithmetic-warmup-vllm
  timeout ${TIMEOUT:-580} python3 run_rl.py --config configs/gpu_multi.yaml model.path=$WARM tokenizer=$WARM \
    rollout.num_workers=$N learner.num_workers=$N rollout.prompts_per_step=$((64 * N)) run.steps=${2:-60} \
    run.eval_every=20 run.save_every=0 run.output_dir=/tmp/runs rollout.enforce_eager=true run.progress_bar=false \
    > $OUT/curve.log 2>&1
  echo "run_rl rc=$?"
  RUN=$(ls -d /tmp/runs/* | head -1)
  mkdir -p $OUT/curve && cp $RUN/metrics.jsonl $RUN/config.yaml $OUT/curve/ && cp $RUN/plots/curves.png $OUT/curve/ 2>/dev/null
  python3 run_rl.py summary $RUN 10 > $OUT/curve/summary.md
  tail -5 $OUT/curve.log
  ;;
esac
