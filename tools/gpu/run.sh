#!/usr/bin/env bash
# The one command for a GPU machine (issue 23): every package's GPU check in <= 8 minutes, one JSON report.
#   bash tools/gpu/run.sh            # from the repository root; report in ${OUT:-/tmp}/gpu_check.json
# The whole check has a 450 s case budget (later cases are skipped with a reason) and a hard 500 s timeout,
# so a 15-minute device lease leaves time for start-up and one rerun. Run directories go to /tmp/gpu_check.
set -u
out="${OUT:-/tmp}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/nvidia_smi.txt" 2>&1 || true
timeout -k 10 500 uv run --frozen python tools/gpu_check.py --device cuda --budget 450 --case-timeout 90 \
    --out "$out/gpu_check.json" "$@" > "$out/gpu_check.stdout" 2> "$out/gpu_check.log"
rc=$?
tail -n 40 "$out/gpu_check.log"
python3 - "$out/gpu_check.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
print(r["device_name"], r["summary"], f'{r["wall_s"]} s')
for c in r["cases"]:
    print(f'{c["package"]:12s} {c["case"]:9s} {c["status"]:8s} steps/s={c.get("steps_per_s")} '
          f'mem={c.get("peak_mem_bytes")} syncs/step={c.get("syncs_per_step")} mfu={c.get("mfu")} '
          f'{c.get("error") or c.get("reason") or ""}')
PY
exit $rc
