#!/bin/bash
set -x
R=/tmp/defrun/results/libero_object_tiny
C=/work/main/config/config.yaml
cd /tmp/defrun
for v in "k8_alpha0 bias 0" "k8_token token 0.1" "k8_concat concat 0.1"; do
  set -- $v
  [ -d /tmp/inv/$1/policy ] || ript train --config $C --mode cfg --labels /tmp/inv/k8_labels.parquet --init $R/base/policy --cond-mode $2 --alpha-uncond $3 --out /tmp/inv/$1 --no-progress > /tmp/inv/$1.log 2>&1
done
python /work/main/benchmarks/cfg_fit.py --config $C --base $R/base/policy --labels /tmp/inv/k8_labels.parquet --heldout /tmp/inv/heldout.h5 \
  --trained k8_alpha0=/tmp/inv/k8_alpha0/policy k8_token=/tmp/inv/k8_token/policy k8_concat=/tmp/inv/k8_concat/policy \
  --out /tmp/inv/fit_k8b.json > /tmp/inv/fit_k8b.md 2>/tmp/inv/fit_k8b.err
