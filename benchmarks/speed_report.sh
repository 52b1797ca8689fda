#!/usr/bin/env bash
# Every speed figure of the README in one run, each printed under the command that produced it.
#   bash benchmarks/speed_report.sh                 # 2 CPU cores: batch 1 side by side, phases
#   DEVICE=cuda bash benchmarks/speed_report.sh     # a GPU: engines' greedy equality, batch 16 and 1,
#                                                   # phases, and with 2+ GPUs logging on 1 vs 2
set -euo pipefail
cd "$(dirname "$0")"
ROUTER=../models/default-router
THRESHOLD=$(python -c "from inference.learned import export_default_threshold as t; print(t('$ROUTER'))")
RULES=(--rule token-v3 --alpha 0.6 --router "$ROUTER" --threshold "$THRESHOLD")
show() { echo; echo "\$ $*"; "$@"; }
if [ "${DEVICE:-cpu}" = cpu ]; then
  show taskset -c 0,1 python bench_compare.py --task stdlib --limit 8 --max-new-tokens 64 "${RULES[@]}" --repeats 3 --threads 2 \
    --bonus rule,target
  show taskset -c 0,1 python bench_phases.py --threshold "$THRESHOLD"
else
  show python check_engines.py --device "$DEVICE" --engines graphs,static,hf \
    --rules target,speculative,token-v3:0.6,kl:0.4,fly:0,learned --router "$ROUTER" --threshold "$THRESHOLD"
  show python bench_compare.py --device "$DEVICE" --task stdlib --limit 96 --max-new-tokens 128 --repeats 3 \
    --batch-size 16 --bonus rule,target "${RULES[@]}"
  show python bench_compare.py --device "$DEVICE" --task stdlib --limit 8 --max-new-tokens 128 --repeats 2 \
    --bonus rule,target "${RULES[@]}"
  show python bench_phases.py --device "$DEVICE" --prompts 12 --max-new-tokens 128 --threshold "$THRESHOLD"
  if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    show python bench_log_scaling.py --devices 2
  fi
fi
