#!/usr/bin/env bash
# GPU benchmark subset: burst throughput CUDA vs CPU and replica packing at each M on CUDA,
# and batched χ-MEPs with the packed Context on CUDA.
# Needs only this repository and a machine with an NVIDIA GPU (CUDA 13 driver):
#   bash benchmarks/gpu.sh            # creates .venv-gpu with `pip install -e .[cuda13,test]`
# Prints JSON lines (also written to benchmarks/results/gpu-<host>-<date>.jsonl).
# Exits 0 with a "skipped" line when no CUDA platform loads.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu}
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV"
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet -e ".[cuda13,test]"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if ! "$PY" -c "import openmm,sys; n=[openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]; sys.exit(0 if 'CUDA' in n else 1)"; then
  echo '{"benchmark": "gpu", "skipped": "no CUDA platform in this OpenMM installation (no GPU or driver)"}'
  exit 0
fi
mkdir -p benchmarks/results
OUT="benchmarks/results/gpu-$(hostname)-$(date +%Y%m%d-%H%M%S).jsonl"
{
  # packing at M = 1, 8, 64, 512 on CUDA and CPU; each platform's unpacked line is the baseline
  "$PY" benchmarks/packing_speedup.py --platforms CUDA CPU --copies 1 8 64 512
  # batched χ-MEPs: the packed Context on CUDA (one call for all moving copies; repeats only
  # up to round-off) against the default serial Reference evaluator, 4 quick paths each
  "$PY" benchmarks/mep_batched.py --quick --workers 1 --batched-platform CUDA \
    --evaluator packed || echo '{"benchmark": "mep_batched", "platform": "CUDA", "failed": true}'
  "$PY" benchmarks/mep_batched.py --quick --workers 1 --evaluator serial
} | tee "$OUT"
# CUDA vs CPU aggregate ratio at each M from the lines above
"$PY" - "$OUT" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
rate = {(r["platform"], r.get("copies", 0)): r["bursts_per_s"] for r in rows if "bursts_per_s" in r}
for (plat, m), v in sorted(rate.items()):
    if plat == "CUDA" and ("CPU", m) in rate:
        print(json.dumps({"benchmark": f"cuda_vs_cpu_{'M' + str(m) if m else 'unpacked'}", "platform": "CUDA", "copies": m,
                          "ratio_cuda_over_cpu": round(v / rate[("CPU", m)], 3)}))
PYEOF
