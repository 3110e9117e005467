#!/usr/bin/env bash
# Phase 3: GAAD-FiLM in D (D changes shape; compatible weights kept, the rest reported). Loads the best checkpoint of phase 2c (override with PREV=path). Extra arguments go to `wubu-gan train`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
PREV="${PREV:-$(best phase2c)}"
[ -f "$PREV" ] || { echo "error: $PREV not found: run run_phase2c.sh first (or set PREV)" >&2; exit 2; }
$WUBU train --config phase3 --video_data_path "$VIDEO_DATA_PATH" --checkpoint_dir "$RUNS/phase3" --load_checkpoint "$PREV" "$@"
