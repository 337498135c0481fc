#!/bin/bash
# more data: K = 8 rollouts per training init state (400 episodes) instead of K = 2 (100)
set -x
R=/tmp/defrun/results/libero_object_tiny
C=/work/main/config/config.yaml
cd /tmp/defrun
[ -f /tmp/inv/k8.h5 ] || ript collect --config $C --policy $R/base/policy --init-states train --rollouts-per-init 8 --seed 999 --out /tmp/inv/k8.h5 --no-progress
[ -f /tmp/inv/k8_labels.parquet ] || ript label --config $C --set rollouts_per_init=8 --rollouts /tmp/inv/k8.h5 --out /tmp/inv/k8_labels.parquet
for v in "k8 " "k8_lr1e-4 --set learning_rate=0.0001" "k8_steps1500 --set train_steps=1500"; do
  name=${v%% *}; args=${v#* }
  [ -d /tmp/inv/$name/policy ] || ript train --config $C --mode cfg --labels /tmp/inv/k8_labels.parquet --init $R/base/policy --cond-mode bias --alpha-uncond 0.1 $args --out /tmp/inv/$name --no-progress > /tmp/inv/$name.log 2>&1
done
python /work/main/benchmarks/cfg_fit.py --config $C --base $R/base/policy --labels /tmp/inv/k8_labels.parquet --heldout /tmp/inv/heldout.h5 \
  --trained k8=/tmp/inv/k8/policy k8_lr1e-4=/tmp/inv/k8_lr1e-4/policy k8_steps1500=/tmp/inv/k8_steps1500/policy \
  --out /tmp/inv/fit_k8.json > /tmp/inv/fit_k8.md 2>/tmp/inv/fit_k8.err
