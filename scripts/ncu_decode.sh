#!/usr/bin/env bash
# Nsight Compute counters of the batch-1 decode kernels (H100, Firecracker: --clock-control none).
# Env: SHAPE (1.5B), KERNELS (regex), SKIP (matching launches skipped: the first steps), COUNT,
# ARGS (extra benchmarks/ncu_step.py arguments), TAG (output name). Writes $OUT/ncu_$TAG.csv and
# prints per kernel: duration, DRAM throughput, registers, occupancy and the top warp stalls.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
TAG=${TAG:-default}
timeout -k 5 ${NCU_S:-150} ncu --clock-control none -k "regex:${KERNELS:-ln_gemv|ffn_fused|sparse_rows|grouped_gemv|tmix_lora}" \
  --launch-skip ${SKIP:-60} --launch-count ${COUNT:-6} \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
  --section LaunchStats --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
  --csv --page details \
  python3 benchmarks/ncu_step.py --shape ${SHAPE:-1.5B} --steps 4 ${ARGS:-} > "$OUT/ncu_$TAG.csv" 2> "$OUT/ncu_$TAG.err"
echo "ncu exit $? ($TAG)"
python3 scripts/ncu_summary.py "$OUT/ncu_$TAG.csv"
