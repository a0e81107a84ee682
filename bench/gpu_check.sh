#!/usr/bin/env bash
# The GPU check, in one command, on a fresh machine with an NVIDIA GPU, nvcc, torch and cmake:
#   bash bench/gpu_check.sh            (about 10 minutes on an H100/H200)
# 1. builds the extension with FUSSFAST_CUDA=on in place (no network needed: plain CMake, with
#    nanobind from pip or from $NANOBIND_DIR);
# 2. runs every test's CUDA case (-k cuda), then compute-sanitizer's racecheck on the kernels;
# 3. runs the benchmarks on the GPU (fused vs eager vs torch.compile, and the others of bench/)
#    and writes bench/results/<gpu>.json and .md (bench/report.py).
# Logs go to ${OUT:-build/gpu_check}. Exits non-zero when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build/gpu_check}
mkdir -p "$out"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | tr -c 'A-Za-z0-9\n' '_' | tr 'A-Z' 'a-z' | sed 's/__*/_/g; s/_$//')
echo "GPU: $gpu"

echo "== build"
nanobind_dir=${NANOBIND_DIR:-$(python3 -m nanobind --cmake_dir)}
cmake -S . -B build/gpu -DFUSSFAST_CUDA=on -DSKBUILD_PROJECT_VERSION=0.1.0 -Dnanobind_DIR="$nanobind_dir" \
  -DPython_EXECUTABLE="$(command -v python3)" > "$out/build.log" 2>&1
cmake --build build/gpu --parallel >> "$out/build.log" 2>&1
cp build/gpu/_C*.so fussfast/
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c 'import fussfast, sys; i = fussfast.build_info(); print(i); sys.exit(0 if fussfast.cuda_available() else "no CUDA")'

echo "== CUDA tests"
python3 -m pytest tests -k cuda -q -p no:cacheprovider 2>&1 | tee "$out/tests.log" | tail -n 5

echo "== compute-sanitizer racecheck and memcheck"
if command -v compute-sanitizer > /dev/null; then
  for tool in racecheck memcheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 3 python3 -m pytest -q -p no:cacheprovider \
      tests/test_region_pool.py tests/test_cluster.py tests/test_correlation.py tests/test_kmeans.py tests/test_back_ce.py \
      -k "cuda and float64 and not 16_bit" > "$out/$tool.log" 2>&1 || { tail -n 30 "$out/$tool.log"; exit 3; }
    echo "$tool: clean"
  done
fi

echo "== benchmarks"
python3 -m pytest bench --benchmark-enable -k cuda -q -p no:cacheprovider --benchmark-json="$out/bench.json" \
  > "$out/bench.log" 2>&1 || { tail -n 30 "$out/bench.log"; exit 4; }
python3 bench/report.py "$out/bench.json" "bench/results/$gpu"
cat "bench/results/$gpu.md"
