#!/usr/bin/env bash
# Phase 2a: KL annealing, lambda_KL 1e-3. Loads the best checkpoint of phase 1 (override with PREV=path). Extra arguments go to `wubu-gan train`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
PREV="${PREV:-$(best phase1)}"
[ -f "$PREV" ] || { echo "error: $PREV not found: run run_phase1.sh first (or set PREV)" >&2; exit 2; }
$WUBU train --config phase2a --video_data_path "$VIDEO_DATA_PATH" --checkpoint_dir "$RUNS/phase2a" --load_checkpoint "$PREV" "$@"
