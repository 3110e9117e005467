# Sourced by the phase scripts: which command runs wubu-gan, and where runs go.
WUBU="${WUBU:-wubu-gan}"
command -v "${WUBU%% *}" >/dev/null 2>&1 || WUBU="uv run wubu-gan"
RUNS="${RUNS:-runs/wubu_gan}"
VIDEO_DATA_PATH="${VIDEO_DATA_PATH:-demo_video_data_dir}"
best() { echo "$RUNS/$1/wubugaad_hybridgen_ckpt_v01_best.pt"; }
need() { [ -f "$(best "$1")" ] || { echo "error: $(best "$1") not found: run the $1 script first" >&2; exit 2; }; }
