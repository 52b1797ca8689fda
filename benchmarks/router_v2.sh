#!/usr/bin/env bash
# The default pair's router, end to end: cascade log of the mixed corpus -> routers -> held-out sweeps.
# Numbers and what they show: docs/router.md ("Router v2") and docs/evaluation.md.
#
#   bash benchmarks/router_v2.sh log   RUNS             # resumable: rerun to continue
#   bash benchmarks/router_v2.sh train RUNS             # routers with and without hidden states
#   bash benchmarks/router_v2.sh eval  RUNS ROUTER SET  # SET: stdlib_heldout | prose_heldout | code_other
#
# DEVICE (cuda), ACCELERATOR (gpu), MAX_DOCS (1536), TARGET (the router's label: path_drop, as shipped,
# harm or ref_harm), FEATURES (all no-hidden: the variants trained), SOURCES (train on these sources
# of the mix only, e.g. '[stdlib]'; the router's folder gets their names as a suffix), THRESHOLDS or RATES (the learned rule's
# sweep, by score threshold or by calibrated deferral rate; rates by default), DEFAULT_RATE (the deferral
# rate whose threshold the export takes as its default: 0.2), RULES and ALPHAS (the hand-set sweep),
# LIMIT (800 examples), BATCH (200), TAG (suffix of the eval folder), EVAL_ARGS (more `deferral evaluate`
# flags, e.g. "--timing-repeats 0") and DEFERRAL (the command) can be
# set in the environment; on 2 CPU cores use DEVICE=cpu ACCELERATOR=cpu and small limits.
set -euo pipefail
stage=$1
runs=$2
device=${DEVICE:-cuda}
deferral=${DEFERRAL:-deferral}
case "$stage" in
  log)
    $deferral log --data mixed:train --max-docs "${MAX_DOCS:-1536}" --docs-per-shard 128 --batch-size 128 \
      --mode cascade --generator speculative --prompt-tokens 256 --max-new-tokens 64 --draft-tokens 5 \
      --hidden target --horizon 16 --rollout-batch-size 256 --device "$device" --out "$runs/log" \
      --tracking-uri none --no-progress
    ;;
  train)
    only=()
    if [ -n "${SOURCES:-}" ]; then only=(--data.sources "$SOURCES"); fi
    for features in ${FEATURES:-all no-hidden}; do
      $deferral train fit --config configs/router.yaml --data.path "$runs/log" --data.target "${TARGET:-path_drop}" \
        --data.features "$features" "${only[@]}" --model.hidden 128 --model.default_deferral_rate "${DEFAULT_RATE:-0.2}" \
        --trainer.accelerator "${ACCELERATOR:-gpu}" \
        --trainer.default_root_dir "$runs/router-${TARGET:-path_drop}-$features${SOURCES:+-$(tr -dc 'a-z-' <<< "$SOURCES")}" \
        --mlflow.tracking_uri none
    done
    ;;
  eval)
    router=$3
    set=$4
    default_alphas='{token-v3: [0.3, 0.4, 0.5, 0.6, 0.7], opt: [-1.0, -0.5, 0.0, 0.5], kl: [0.05, 0.1, 0.2, 0.4], typical: [0.7, 0.8, 0.9, 0.95], fly: [0.0, 0.3, 0.6]}'
    if [ -n "${THRESHOLDS:-}" ]; then
      sweep=(--thresholds "$THRESHOLDS")
    else
      sweep=(--deferral-rates "${RATES:-[0.12, 0.16, 0.2, 0.25, 0.3]}")
    fi
    $deferral evaluate --config configs/evaluate.yaml --task "hf:benchmarks/data/$set.jsonl" \
      --prompt-column prompt --reference-column reference --limit "${LIMIT:-800}" \
      --rules "${RULES:-[token-v3, opt, kl, typical, fly, learned]}" --modes '[speculative]' \
      --alphas "${ALPHAS:-$default_alphas}" \
      --router "$router" "${sweep[@]}" \
      --max-new-tokens 64 --batch-size "${BATCH:-200}" --device "$device" --out "$runs/eval-$set${TAG:+-$TAG}" --tracking-uri none ${EVAL_ARGS:-}
    ;;
  *)
    echo "error: unknown stage '$stage': use log, train or eval" >&2
    exit 2
    ;;
esac
