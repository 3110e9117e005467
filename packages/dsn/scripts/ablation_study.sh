#!/usr/bin/env bash
# Ablation study (the guide's option 3): five configurations into runs/ablation, then a results table.
# Override with environment variables: DATASET_ROOT (default: the built-in synthetic dataset),
# SAVE_DIR, EPOCHS, DEVICE; extra arguments are passed on to `dsn ablation`.
set -euo pipefail
DSN="${DSN:-dsn}"
command -v "${DSN%% *}" >/dev/null 2>&1 || DSN="uv run dsn"
ARGS=(--save_dir "${SAVE_DIR:-runs/ablation}" --epochs "${EPOCHS:-20}" --device "${DEVICE:-auto}")
[ -n "${DATASET_ROOT:-}" ] && ARGS+=(--dataset_root "$DATASET_ROOT")
exec $DSN ablation "${ARGS[@]}" "$@"
