#!/usr/bin/env bash
# Full training (the guide's option 2): the advanced model for 20 epochs, then the evaluation of the chosen checkpoint.
# Override with environment variables: DATASET_ROOT (default: the built-in synthetic dataset),
# SAVE_DIR, EPOCHS, DEVICE; extra arguments are passed on to `dsn train`.
set -euo pipefail
DSN="${DSN:-dsn}"
command -v "${DSN%% *}" >/dev/null 2>&1 || DSN="uv run dsn"
SAVE_DIR="${SAVE_DIR:-runs/dsn_advanced_v1}"
EPOCHS="${EPOCHS:-20}"
DATA=()
[ -n "${DATASET_ROOT:-}" ] && DATA=(--dataset_root "$DATASET_ROOT")
$DSN train --model_type advanced "${DATA[@]}" --save_dir "$SAVE_DIR" --epochs "$EPOCHS" --device "${DEVICE:-auto}" \
  --num_attn_heads 4 --num_attn_layers 2 --num_scales 3 --use_cache 1 --cache_size 1000 "$@"
# The checkpoint training chose (best.pt: best epoch on held-out training videos), else the last one; never a
# file named after $EPOCHS, which extra arguments such as --epochs may have changed.
CKPT="$SAVE_DIR/best.pt"
[ -f "$CKPT" ] || CKPT="$SAVE_DIR/latest.pt"
$DSN evaluate --checkpoint "$CKPT" "${DATA[@]}"
