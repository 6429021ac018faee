#!/bin/sh
# One GPU session for the RL loop on one GPU (issue 6): a supervised warm-up whose MLA sizes vLLM serves,
# then configs/gpu_single.yaml for a few steps from it. Needs the core+vllm gpu-kit installed in /tmp/site.
#   sh benchmarks/gpu_rl_session.sh STEPS     (outputs under $OUT)
set -x
export PYTHONPATH=/tmp/site:.
STEPS=${1:-16}
WARM=checkpoints/arithmetic-warmup-vllm
if [ ! -f $WARM/model.safetensors ]; then
  python3 -m deltarl.rl.warmup --out $WARM --mla-dims released --device cuda --threads 8 --steps 1400 --eval-every 0 \
    > $OUT/warmup.log 2>&1 || { tail -40 $OUT/warmup.log; exit 1; }
  tail -3 $OUT/warmup.log
  mkdir -p $OUT/warmup && cp -r $WARM/. $OUT/warmup/
fi
python3 run_rl.py --config configs/gpu_single.yaml model.path=$WARM tokenizer=$WARM run.steps=$STEPS \
  run.eval_every=${EVAL_EVERY:-20} run.save_every=$STEPS run.output_dir=$OUT/runs rollout.enforce_eager=true \
  run.progress_bar=false > $OUT/rl.log 2>&1
echo "run_rl rc=$?"
grep -E "step [0-9]+:" $OUT/rl.log | tail -5
tail -5 $OUT/rl.log
rm -rf $OUT/runs/*/checkpoints $OUT/runs/*/final $OUT/runs/*/tensorboard
