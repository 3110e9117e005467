#!/usr/bin/env bash
# Issue 21 item 5: advanced vs baseline, paired over synthetic dataset seeds x all 5 splits (README
# "Advanced vs baseline: why it is not better").
#   1. both models with the defaults on each seed's 30-video dataset (6 epochs, best.pt chosen on held-out
#      training videos), paired 95 % t-intervals over the seed x split units;
#   2. variants of the advanced model paired with the SAME baseline runs (--baseline_from): width 64 (245K
#      parameters instead of 2.77M, capacity) and select_fraction=0 (no held-out selection split, last epoch);
#   3. the headroom: F of the annotation itself (mean gtscore) per unit, and how alike the two models rank steps;
#   4. the issue's size: 20-video datasets of seeds 13 and 14, both models (into $OUT/n20).
# Override with environment variables: SEEDS (default "13 14 15 16"), OUT (default runs/advanced_vs_baseline),
# EPOCHS (6), NUM_VIDEOS (30). Runs on one CPU thread; ~5 min of wall per seed for step 1 on a loaded 2-core box.
set -euo pipefail
cd "$(dirname "$0")/../../.."
SEEDS="${SEEDS:-13 14 15 16}"
OUT="${OUT:-runs/advanced_vs_baseline}"
COMMON=(--seeds $SEEDS --num_videos "${NUM_VIDEOS:-30}" --epochs "${EPOCHS:-6}" --out "$OUT")
export OMP_NUM_THREADS=1
uv run python tools/bench_dsn.py quality "${COMMON[@]}"
DEFAULTS="$OUT/quality_defaults_seeds${SEEDS// /-}.json"
uv run python tools/bench_dsn.py quality "${COMMON[@]}" --models advanced --set model.enc_hidden=64 --baseline_from "$DEFAULTS"
uv run python tools/bench_dsn.py quality "${COMMON[@]}" --models advanced --set select_fraction=0 --baseline_from "$DEFAULTS"
uv run python tools/bench_dsn.py headroom --combine "$DEFAULTS" --num_videos "${NUM_VIDEOS:-30}" --out "$OUT"
uv run python tools/bench_dsn.py quality --seeds 13 14 --num_videos 20 --epochs "${EPOCHS:-6}" --out "$OUT/n20"
