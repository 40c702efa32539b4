#!/usr/bin/env bash
# The GPU workflow: on the GPU machine (no Node toolchain, no npm), build the addon against that machine's
# PyTorch LibTorch (CUDA) with plain cmake, then run the GPU test suite and the benchmarks.
#
# On the development machine, once: make the Node kit .devkit/ (a node binary, the Node-API headers and a
# setup.sh that exports NODE_API_HEADERS, TORCH_CMAKE_PREFIX, LIBTORCH) and run `npm run build:ts`
# Then with the device tool, carrying .devkit, dist and node_modules/node-addon-api:
#   source .devkit/setup.sh && bash scripts/device-test.sh
# Logs and results go to $OUT (or build/device-out).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v node >/dev/null || [ -z "${TORCH_CMAKE_PREFIX:-}" ]; then
  [ -f .devkit/setup.sh ] || { echo "no node and no .devkit/setup.sh: make the Node kit .devkit/ and carry it" >&2; exit 1; }
  source .devkit/setup.sh
fi
OUT=${OUT:-build/device-out}
mkdir -p "$OUT"
[ -f dist/index.js ] || { echo "dist/ missing: run 'npm run build:ts' here and carry dist" >&2; exit 1; }
[ -f node_modules/node-addon-api/napi.h ] || { echo "carry node_modules/node-addon-api" >&2; exit 1; }

# ---- build (plain cmake: cmake-js is not there)
node scripts/libtorch.mjs --json > "$OUT/libtorch.json"
version=$(node -p "require(process.argv[1]).fullVersion" "$(realpath "$OUT/libtorch.json")")
flavour=$(node -p "require(process.argv[1]).flavour" "$(realpath "$OUT/libtorch.json")")
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
t0=$(date +%s)
cmake -S . -B build "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_CMAKE_PREFIX" \
  -DNODE_API_HEADERS="$NODE_API_HEADERS" -DNODE_ADDON_API_DIR="$PWD/node_modules/node-addon-api" \
  -DX2I_LIBTORCH_VERSION="$version" -DX2I_LIBTORCH_FLAVOUR="$flavour" > "$OUT/cmake-configure.log" 2>&1 \
  || { tail -40 "$OUT/cmake-configure.log"; exit 1; }
grep -E '^-- x2i:|x2i:' "$OUT/cmake-configure.log" || true
cmake --build build -j "$(nproc)" > "$OUT/cmake-build.log" 2>&1 || { tail -60 "$OUT/cmake-build.log"; exit 1; }
cp "$OUT/libtorch.json" build/libtorch.json
echo "built in $(( $(date +%s) - t0 )) s against LibTorch $version ($flavour)"
readelf -d build/Release/x2i.node | grep -E 'NEEDED|RUNPATH' | tee "$OUT/linkage.txt"
grep -q 'libtorch_cuda' "$OUT/linkage.txt" || { echo "libtorch_cuda was dropped by the linker" >&2; exit 1; }

# ---- info, GPU tests (failing, not skipping, without CUDA), benchmarks
node bin/x2i.js info | tee "$OUT/info.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" || true
# X2I_GPU_TESTS: the test files to run (default: every test/**/*.gpu.test.mjs); a failure is reported at the end, after
# the benchmarks, so that one run gives both
read -r -a tests <<< "${X2I_GPU_TESTS:-}"
set +e
X2I_REQUIRE_GPU=1 node scripts/gpu-tests.mjs --test-reporter=spec "${tests[@]}" 2>&1 | tee "$OUT/gpu-tests.log"
status=${PIPESTATUS[0]}
set -e
[ "$status" -eq 0 ] || echo "GPU tests failed (status $status)" >&2
node bench/bridge.mjs --mib "${X2I_BENCH_MIB:-256}" --json "$OUT/bridge.json" 2>&1 | tee "$OUT/bridge.md"
# FLUX blocks and whole model, with the PyTorch baseline in the same run (the baseline scripts flux_blocks.py and
# x2i_loss.py, PyTorch eager and torch.compile of the reference math, are carried in X2I_BASELINES, default
# .cache/baselines)
baselines=${X2I_BASELINES:-.cache/baselines}
baseline=()
[ -f "$baselines/flux_blocks.py" ] && baseline=(--baseline "$baselines/flux_blocks.py")
[ "${X2I_BENCH_FLUX:-1}" = 1 ] && node bench/flux.mjs "${baseline[@]}" --json "$OUT/flux.json" 2>&1 | tee "$OUT/flux.md"
lossBaseline=()
[ -f "$baselines/x2i_loss.py" ] && lossBaseline=(--baseline "$baselines/x2i_loss.py")
# X2I_BENCH_DISTILL_ARGS: more options for bench/distill.mjs (e.g. --no-step)
read -r -a distillArgs <<< "${X2I_BENCH_DISTILL_ARGS:-}"
[ "${X2I_BENCH_DISTILL:-1}" = 1 ] && node bench/distill.mjs "${lossBaseline[@]}" "${distillArgs[@]}" --json "$OUT/distill.json" 2>&1 | tee "$OUT/distill.md"
# the Qwen2.5-VL-7B-size encoder (issue 5), transformers in the same run
[ "${X2I_BENCH_QWEN:-1}" = 1 ] && node bench/qwen.mjs --baseline bench/baselines/qwen_prefill.py --json "$OUT/qwen.json" 2>&1 | tee "$OUT/qwen.md"
# the X2I training step and the teacher's generation at real sizes (issue 6), the PyTorch eager composition after
# (X2I_BENCH_STEP_ARGS: more options, e.g. --compile)
read -r -a stepArgs <<< "${X2I_BENCH_STEP_ARGS:-}"
[ "${X2I_BENCH_STEP:-1}" = 1 ] && node bench/x2i_step.mjs --baseline bench/baselines/x2i_step.py "${stepArgs[@]}" --json "$OUT/x2i_step.json" 2>&1 | tee "$OUT/x2i_step.md"
# fine-tuning at real size (issue 13): LoRA and LightControl steps, generation with an unfused/fused adapter, the
# PyTorch eager composition after (off by default: X2I_BENCH_FINETUNE=1; X2I_BENCH_FINETUNE_ARGS: e.g. --compile)
read -r -a finetuneArgs <<< "${X2I_BENCH_FINETUNE_ARGS:-}"
[ "${X2I_BENCH_FINETUNE:-0}" = 1 ] && node bench/finetune.mjs --baseline bench/baselines/finetune_step.py "${finetuneArgs[@]}" --json "$OUT/finetune.json" 2>&1 | tee "$OUT/finetune.md"
# unfused LoRA's one-pass kernel at FLUX.1-dev's adapted layers against its LibTorch twin and a device copy
[ "${X2I_BENCH_LOWRANK:-1}" = 1 ] && node bench/low_rank.mjs --json "$OUT/low_rank.json" 2>&1 | tee "$OUT/low_rank.md"
# multi-GPU layouts at real sizes (single / data / split; those needing more GPUs than present are skipped)
[ "${X2I_BENCH_PARALLEL:-1}" = 1 ] && node bench/x2i_parallel.mjs --json "$OUT/x2i_parallel.json" 2>&1 | tee "$OUT/x2i_parallel.md"
exit "$status"
