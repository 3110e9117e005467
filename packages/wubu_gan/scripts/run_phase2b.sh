#!/usr/bin/env bash
# Phase 2b: KL annealing, lambda_KL 1e-2. Loads the best checkpoint of phase 2a (override with PREV=path). Extra arguments go to `wubu-gan train`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
PREV="${PREV:-$(best phase2a)}"
[ -f "$PREV" ] || { echo "error: $PREV not found: run run_phase2a.sh first (or set PREV)" >&2; exit 2; }
$WUBU train --config phase2b --video_data_path "$VIDEO_DATA_PATH" --checkpoint_dir "$RUNS/phase2b" --load_checkpoint "$PREV" "$@"
