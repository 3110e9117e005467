#!/usr/bin/env bash
# Phase 4: fine-tuning, long run. Loads the best checkpoint of phase 3 (override with PREV=path). Extra arguments go to `wubu-gan train`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
PREV="${PREV:-$(best phase3)}"
[ -f "$PREV" ] || { echo "error: $PREV not found: run run_phase3.sh first (or set PREV)" >&2; exit 2; }
$WUBU train --config phase4 --video_data_path "$VIDEO_DATA_PATH" --checkpoint_dir "$RUNS/phase4" --load_checkpoint "$PREV" "$@"
