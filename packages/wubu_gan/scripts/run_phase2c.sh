#!/usr/bin/env bash
# Phase 2c: target lambda_KL 0.1. Loads the best checkpoint of phase 2b (override with PREV=path). Extra arguments go to `wubu-gan train`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
PREV="${PREV:-$(best phase2b)}"
[ -f "$PREV" ] || { echo "error: $PREV not found: run run_phase2b.sh first (or set PREV)" >&2; exit 2; }
$WUBU train --config phase2c --video_data_path "$VIDEO_DATA_PATH" --checkpoint_dir "$RUNS/phase2c" --load_checkpoint "$PREV" "$@"
