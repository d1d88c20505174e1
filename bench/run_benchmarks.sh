#!/usr/bin/env bash
# Runs the benchmarks behind docs/benchmarks.md and writes their raw output
# to bench/results/. Run on a quiet machine: other work on the cores changes
# every number.
#
# Usage: bench/run_benchmarks.sh [THREADS]   (default: 2)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
bin=build/bin
out=bench/results
python=${LSTM_PYTHON:-/usr/bin/python3}
mkdir -p "$out"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD)"
  echo "binary: $("$bin/lstm-bench" --version)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
  echo "threads: $threads"
} > "$out/machine.txt"

echo "== ours and PyTorch, side by side"
for config in configs/ptb_lstm_small.json configs/ptb_lstm_book_better.json; do
  name=$(basename "$config" .json)
  steps=20
  [[ $name == ptb_lstm_book_better ]] && steps=8
  "$python" scripts/bench_vs_pytorch.py --config "$config" --threads "$threads" --steps "$steps" \
    --ours "$bin/lstm-bench" --json > "$out/vs_pytorch_$name.json"
  "$bin/lstm-bench" --config "$config" --threads "$threads" --steps "$steps" > "$out/ours_$name.txt"
  cat "$out/ours_$name.txt"
  # The same model with the recurrent step products and the decoder left to the BLAS.
  "$bin/lstm-bench" --config "$config" --threads "$threads" --steps "$steps" --blas-products \
    > "$out/ours_${name}_blas_products.txt"
  grep -E "^(train|eval)" "$out/ours_${name}_blas_products.txt" | sed 's/^/blas products: /'
  # On a CPU with AVX-512, the same packed products with their AVX2 kernels.
  if grep -q "packed avx512 products" "$out/ours_$name.txt"; then
    "$bin/lstm-bench" --config "$config" --threads "$threads" --steps "$steps" --avx2-kernels \
      > "$out/ours_${name}_avx2_kernels.txt"
    grep -E "^(train|eval)" "$out/ours_${name}_avx2_kernels.txt" | sed 's/^/avx2 kernels: /'
  else
    rm -f "$out/ours_${name}_avx2_kernels.txt"
  fi
done

echo "== peak memory of lstm-train on ptb_lstm_book_better (30 steps)"
run=$(mktemp -d)
/usr/bin/time -v "$bin/lstm-train" --config configs/ptb_lstm_book_better.json --run-dir "$run/run" \
  --set train.max_steps=30 --set train.threads="$threads" --set eval.batch_size=10 --quiet \
  2> "$out/memory_book_better.txt" || true
grep -E "Maximum resident" "$out/memory_book_better.txt"
rm -rf "$run"

echo "== sweep over hidden and batch size"
"$bin/lstm-bench" --sweep --threads "$threads" --steps 10 | tee "$out/sweep.md"
"$python" bench/plot_sweep.py "$out/sweep.md" -o docs/img/bench_sweep.png
