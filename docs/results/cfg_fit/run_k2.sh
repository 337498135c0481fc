#!/bin/bash
# CFG fit investigation on the default run (CPU)
set -x
R=/tmp/defrun/results/libero_object_tiny
C=/work/main/config/config.yaml
cd /tmp/defrun
mkdir -p /tmp/inv
[ -f /tmp/inv/heldout.h5 ] || ript collect --config $C --policy $R/base/policy --init-states train --rollouts-per-init 2 --seed 777 --out /tmp/inv/heldout.h5 --no-progress
for v in "lr1e-4 --set learning_rate=0.0001" "steps1500 --set train_steps=1500" "alpha0 --alpha-uncond 0"; do
  name=${v%% *}; args=${v#* }
  [ -d /tmp/inv/$name/policy ] || ript train --config $C --mode cfg --labels $R/labels.parquet --init $R/base/policy --cond-mode bias --alpha-uncond 0.1 $args --out /tmp/inv/$name --no-progress > /tmp/inv/$name.log 2>&1
done
python /work/main/benchmarks/cfg_fit.py --config $C --base $R/base/policy --labels $R/labels.parquet --heldout /tmp/inv/heldout.h5 \
  --trained default=$R/train/bias_a0.1/policy lr1e-4=/tmp/inv/lr1e-4/policy steps1500=/tmp/inv/steps1500/policy alpha0=/tmp/inv/alpha0/policy \
  --out /tmp/inv/fit.json > /tmp/inv/fit.md 2>/tmp/inv/fit.err
