#!/usr/bin/env bash
# The README's CPU quality recipe: the richer synthetic video at 32x32, phase 1 then phase 2a (resuming from
# phase 1's best checkpoint), then evaluation against copy-last-frame on the validation split and on a held-out
# video made with another seed. ABLATION=motion_off|frozen_curvature|no_gan runs phase 1 only with that change.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
RUNS="${RUNS:-runs/wubu_quality}"
DATA="${DATA:-data/wubu_quality}"
P1_EPOCHS="${P1_EPOCHS:-8}"; P2_EPOCHS="${P2_EPOCHS:-4}"
[ -f "$DATA/procedural_shapes_v01.mp4" ] || $WUBU make-demo-video --which shapes --out "$DATA" --seed 0
[ -f "$DATA/heldout/procedural_shapes_v01.mp4" ] || $WUBU make-demo-video --which shapes --out "$DATA/heldout" --seed 1
COMMON=(--video_data_path "$DATA/procedural_shapes_v01.mp4" --image_h 32 --image_w 32 --latent_dim 128 --batch_size 8
        --learning_rate_gen 1e-3 --learning_rate_disc 1e-4 --num_workers 0 --threads 1 --quiet
        --wandb_log_train_recon_interval 0 --wandb_log_fixed_noise_samples_interval 0)
case "${ABLATION:-}" in
  motion_off) COMMON+=(--no-use_wubu_motion_branch); RUNS="$RUNS/ablation_motion_off" ;;
  frozen_curvature) COMMON+=(--no-wubu_learnable_curvature); RUNS="$RUNS/ablation_frozen_curvature" ;;
  no_gan) COMMON+=(--lambda_gan 0); RUNS="$RUNS/ablation_no_gan" ;;
  "") ;;
  *) echo "error: unknown ABLATION=$ABLATION (motion_off, frozen_curvature, no_gan)" >&2; exit 2 ;;
esac
$WUBU train --config phase1 "${COMMON[@]}" --epochs "$P1_EPOCHS" --checkpoint_dir "$RUNS/phase1" "$@"
LAST="$RUNS/phase1/wubugaad_hybridgen_ckpt_v01_best.pt"
if [ -z "${ABLATION:-}" ]; then
  $WUBU train --config phase2a "${COMMON[@]}" --epochs "$P2_EPOCHS" --checkpoint_dir "$RUNS/phase2a" --load_checkpoint "$LAST" "$@"
  LAST="$RUNS/phase2a/wubugaad_hybridgen_ckpt_v01_best.pt"
fi
$WUBU evaluate --checkpoint "$LAST" --json > "$RUNS/eval_val.json"
$WUBU evaluate --checkpoint "$LAST" --video_data_path "$DATA/heldout/procedural_shapes_v01.mp4" --max_clips 200 --json > "$RUNS/eval_heldout.json"
cat "$RUNS/eval_val.json" "$RUNS/eval_heldout.json"
