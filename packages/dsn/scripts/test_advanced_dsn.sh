#!/usr/bin/env bash
# Quick test (the guide's option 1): one epoch of the advanced model.
# Override with environment variables: DATASET_ROOT (default: the built-in synthetic dataset),
# SAVE_DIR, EPOCHS, DEVICE; extra arguments are passed on to `dsn train`.
set -euo pipefail
DSN="${DSN:-dsn}"
command -v "${DSN%% *}" >/dev/null 2>&1 || DSN="uv run dsn"
ARGS=(--model_type advanced --save_dir "${SAVE_DIR:-runs/dsn_advanced_test}" --epochs "${EPOCHS:-1}"
      --device "${DEVICE:-auto}" --num_attn_heads 4 --num_attn_layers 2 --num_scales 3 --use_cache 1 --cache_size 1000)
[ -n "${DATASET_ROOT:-}" ] && ARGS+=(--dataset_root "$DATASET_ROOT")
exec $DSN train "${ARGS[@]}" "$@"
