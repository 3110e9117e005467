#!/usr/bin/env bash
# The README's CPU quality recipe: the richer synthetic video at 32x32, phase 1 (adversarial term ramped in over
# its first 150 steps) then phase 2a by loading phase 1's best checkpoint; then `evaluate` against
# copy-last-frame on the validation split and on three held-out procedural videos (seeds 1, 2, 3: unseen scenes,
# but consulted while the recipe was chosen; README "Fresh videos" has video seeds 4-7), and a summary (mean +- std, worst, D-band fraction, CPU time of each training phase) in $RUNS/summary.json.
# The generator warps the last frame (--gen_output warp, the default); training clips are mirrored and their
# colours permuted at random (--augment_flip --augment_color); cosine LR decay over the last 30 % of each phase;
# the adversarial gradient is held at half the reconstruction gradient at G's last layer (--lambda_gan_adaptive
# --lambda_gan 0.5) and D learns at the guide's 1e-4, which keeps D_total in the guide's band for most of the run.
# ABLATION=full|motion_off|frozen_curvature|no_gan|no_context|residual|frame_diff runs phase 1 only, with that
# change (full: none, for rows at a shorter budget: P1_EPOCHS=8 ABLATION=full gives the recipe's row beside them;
# no_context: the original decoder from z alone and a D that sees only the predicted frame; residual: the
# generator's rgb residual without the warp).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUNS="${RUNS:-runs/wubu_quality}"
DATA="${DATA:-data/wubu_quality}"
P1_EPOCHS="${P1_EPOCHS:-16}"; P2_EPOCHS="${P2_EPOCHS:-4}"
[ -f "$DATA/procedural_shapes_v01.mp4" ] || $WUBU make-demo-video --which shapes --out "$DATA" --seed 0
for s in 1 2 3; do
  [ -f "$DATA/heldout$s/procedural_shapes_v01.mp4" ] || $WUBU make-demo-video --which shapes --out "$DATA/heldout$s" --seed $s
done
COMMON=(--video_data_path "$DATA/procedural_shapes_v01.mp4" --image_h 32 --image_w 32 --latent_dim 128 --batch_size 8
        --learning_rate_gen 1e-3 --learning_rate_disc 1e-4 --num_workers 0 --threads 1 --quiet
        --wandb_log_train_recon_interval 0 --wandb_log_fixed_noise_samples_interval 0
        --augment_flip --augment_color --lr_decay_fraction 0.3 --lambda_gan_adaptive --lambda_gan 0.5)
case "${ABLATION:-}" in
  motion_off) COMMON+=(--no-use_wubu_motion_branch); RUNS="$RUNS/ablation_motion_off" ;;
  frozen_curvature) COMMON+=(--no-wubu_learnable_curvature); RUNS="$RUNS/ablation_frozen_curvature" ;;
  no_gan) COMMON+=(--lambda_gan 0); RUNS="$RUNS/ablation_no_gan" ;;
  no_context) COMMON+=(--no-gen_context_skip --no-disc_see_context); RUNS="$RUNS/ablation_no_context" ;;
  residual) COMMON+=(--gen_output residual); RUNS="$RUNS/ablation_residual" ;;
  frame_diff) COMMON+=(--disc_frame_diff); RUNS="$RUNS/ablation_frame_diff" ;;
  full) RUNS="$RUNS/ablation_full" ;;
  "") ;;
  *) echo "error: unknown ABLATION=$ABLATION (full, motion_off, frozen_curvature, no_gan, no_context, residual, frame_diff)" >&2; exit 2 ;;
esac
# CPU time (user + sys) of each training phase goes to cpu_seconds.txt beside its metrics (GNU time when present).
timed() { local out="$1"; shift
  if [ -x /usr/bin/time ]; then /usr/bin/time -f "%U %S" -o "$out.tmp" "$@"; mv "$out.tmp" "$out"; else "$@"; fi; }
mkdir -p "$RUNS"
timed "$RUNS/phase1.cpu" $WUBU train --config phase1 "${COMMON[@]}" --epochs "$P1_EPOCHS" --lambda_gan_warmup_steps 150 \
  --checkpoint_dir "$RUNS/phase1" "$@"
[ -f "$RUNS/phase1.cpu" ] && mv "$RUNS/phase1.cpu" "$RUNS/phase1/cpu_seconds.txt"
CKPTS=("$RUNS/phase1/wubugaad_hybridgen_ckpt_v01_best.pt")
if [ -z "${ABLATION:-}" ]; then
  timed "$RUNS/phase2a.cpu" $WUBU train --config phase2a "${COMMON[@]}" --epochs "$P2_EPOCHS" --checkpoint_dir "$RUNS/phase2a" \
    --load_checkpoint "${CKPTS[0]}" "$@"
  [ -f "$RUNS/phase2a.cpu" ] && mv "$RUNS/phase2a.cpu" "$RUNS/phase2a/cpu_seconds.txt"
  CKPTS+=("$RUNS/phase2a/wubugaad_hybridgen_ckpt_v01_best.pt")
fi
for c in "${CKPTS[@]}"; do
  d="$(dirname "$c")"
  $WUBU evaluate --checkpoint "$c" --json > "$d/eval_val.json"
  for s in 1 2 3; do
    $WUBU evaluate --checkpoint "$c" --video_data_path "$DATA/heldout$s/procedural_shapes_v01.mp4" --max_clips 200 \
      --json > "$d/eval_heldout$s.json"
  done
done
${PYTHON:-uv run python} "$HERE/quality_summary.py" "$RUNS" | tee "$RUNS/summary.json"
