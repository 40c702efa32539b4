#!/usr/bin/env bash
# Kernel times of one denoising step at FLUX.1-dev size, 1024², with one frozen rank-16 adapter fused and unfused
# (and without adapter), by Nsight Compute on the GPU machine, after scripts/device-test.sh has built the addon:
#   source .devkit/setup.sh && bash scripts/device-profile.sh [none fused unfused]
# Writes $OUT/ncu-<mode>.csv and $OUT/ncu-summary.md (bench/ncu_summary.mjs: time by kernel, the difference of the
# last mode to the first). ncu runs with --clock-control none (the clocks as they are).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/device-out}
mkdir -p "$OUT"
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1 || true)
[ -n "$ncu" ] || { echo "no ncu on this machine" >&2; exit 1; }
modes=("$@"); [ ${#modes[@]} -gt 0 ] || modes=(fused unfused)
csvs=()
for m in "${modes[@]}"; do
  "$ncu" --clock-control none --profile-from-start off --metrics gpu__time_duration.sum --csv --page raw \
    --log-file "$OUT/ncu-$m.csv" node bench/profile_generate.mjs --mode "$m" --iters 3 2>&1 | tail -3
  csvs+=("$OUT/ncu-$m.csv")
done
node bench/ncu_summary.mjs --grid --top 60 "${csvs[@]}" | tee "$OUT/ncu-summary.md"
