#!/usr/bin/env bash
# Phase 1 (guide section 3): reconstruction first, lambda_KL 1e-4, no D-FiLM. Extra arguments go to `wubu-gan train`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
$WUBU train --config phase1 --video_data_path "$VIDEO_DATA_PATH" --checkpoint_dir "$RUNS/phase1" "$@"
