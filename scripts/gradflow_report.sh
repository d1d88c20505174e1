#!/usr/bin/env bash
# Measure gradient flow through time for the rnn, rnn_relu, gru and lstm cells
# at the book's small size, and write the report docs/gradient-flow.md.
#
# For each cell this script trains configs/ptb_lstm_small.json with
# model.cell set to the cell (rnn and rnn_relu with train.lr = RNN_LR), or
# reuses a finished run (RUNS_DIR/<cell>/summary.json). It runs lstm-gradflow
# on the fresh initialization (the run's config.json, so the same seed) and on
# the best checkpoint. Then it trains the rnn once more for one epoch with
# clipping off (train.clip_norm 0) to find its first exploding or non-finite
# step. Last, it writes the report with two plots. Every number in the report
# comes from these runs.
#
# Usage: scripts/gradflow_report.sh   (from any folder; paths are relative to the repo)
# Environment:
#   EPOCHS (4)                 train.epochs of each cell's run
#   MAX_STEPS (0)              train.max_steps of every run; 0 = whole epochs
#   DATA_DIR (data/ptb)        data.dir of every run
#   RUNS_DIR (runs/gradflow)   run folders, one per cell plus rnn_noclip
#   DOC (docs/gradient-flow.md)  the report; its plots go to img/ next to it
#   RNN_LR (5)                 train.lr of rnn and rnn_relu (the lstm config's lr 20 is too high for them)
#   GRADFLOW_STEPS (100), GRADFLOW_BATCHES (10), GRADFLOW_BATCH_SIZE (20)
#                              lstm-gradflow --steps, --batches, --batch-size
#   THREADS (0)                threads of training and measurement; 0 = all cores
#   BUILD_DIR (build)          folder with src/lstm-train and src/lstm-gradflow
#   PYTHON                     interpreter with matplotlib (default: the first of
#                              python3 and /usr/bin/python3 that imports it)
#
# A quick check on the sample corpus (minutes, not hours):
#   MAX_STEPS=50 EPOCHS=1 DATA_DIR=data/sample GRADFLOW_STEPS=30 GRADFLOW_BATCHES=2 \
#     RUNS_DIR=/tmp/gradflow_runs DOC=/tmp/gradflow_doc/gradient-flow.md scripts/gradflow_report.sh
set -euo pipefail

repo_root=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo_root"

epochs=${EPOCHS:-4}
max_steps=${MAX_STEPS:-0}
data_dir=${DATA_DIR:-data/ptb}
runs_dir=${RUNS_DIR:-runs/gradflow}
doc=${DOC:-docs/gradient-flow.md}
rnn_lr=${RNN_LR:-5}
gradflow_steps=${GRADFLOW_STEPS:-100}
gradflow_batches=${GRADFLOW_BATCHES:-10}
gradflow_batch_size=${GRADFLOW_BATCH_SIZE:-20}
threads=${THREADS:-0}
build_dir=${BUILD_DIR:-build}
base_config=configs/ptb_lstm_small.json
cells=(rnn rnn_relu gru lstm)

train_bin="$build_dir/bin/lstm-train"
gradflow_bin="$build_dir/bin/lstm-gradflow"
for binary in "$train_bin" "$gradflow_bin"; do
  if [[ ! -x "$binary" ]]; then
    echo "error: $binary not found: build first (cmake -S . -B $build_dir -G Ninja && ninja -C $build_dir)" >&2
    exit 1
  fi
done

python=""
for candidate in ${PYTHON:-} python3 /usr/bin/python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import matplotlib" >/dev/null 2>&1; then
    python=$candidate
    break
  fi
done
if [[ -z "$python" ]]; then
  echo "error: no python3 with matplotlib found: sudo apt-get install python3-matplotlib, or set PYTHON" >&2
  exit 2
fi

# Prints the value at a dotted key path of a JSON file; "null" when it is absent.
json_get() {
  "$python" - "$1" "$2" <<'EOF'
import json, sys
value = json.load(open(sys.argv[1]))
for key in sys.argv[2].split("."):
    value = value.get(key) if isinstance(value, dict) else None
print(json.dumps(value) if not isinstance(value, str) else value)
EOF
}

# The --set overrides of one run.
run_overrides() {
  local cell=$1 clip=$2 run_epochs=$3
  local overrides=(--set "model.cell=$cell" --set "data.dir=$data_dir" --set "train.epochs=$run_epochs"
                   --set "train.max_steps=$max_steps" --set "train.threads=$threads")
  if [[ $cell == rnn || $cell == rnn_relu ]]; then overrides+=(--set "train.lr=$rnn_lr"); fi
  if [[ -n $clip ]]; then overrides+=(--set "train.clip_norm=$clip"); fi
  # Without clipping, log every step so that metrics.jsonl has each gradient norm.
  if [[ $clip == 0 ]]; then overrides+=(--set "train.log_interval=1"); fi
  printf '%s\n' "${overrides[@]}"
}

# Fails unless the reused run's config.json has the values this script would set.
check_reused_config() {
  local run=$1 cell=$2 run_epochs=$3 clip=$4
  local expected=("model.cell=$cell" "data.dir=$data_dir" "train.epochs=$run_epochs" "train.max_steps=$max_steps")
  if [[ $cell == rnn || $cell == rnn_relu ]]; then expected+=("train.lr=$rnn_lr"); fi
  if [[ -n $clip ]]; then expected+=("train.clip_norm=$clip"); fi
  "$python" - "$run/config.json" "${expected[@]}" <<'EOF_PY'
import json, sys
config = json.load(open(sys.argv[1]))
for pair in sys.argv[2:]:
    key, want = pair.split("=", 1)
    have = config
    for part in key.split("."):
        have = have.get(part) if isinstance(have, dict) else None
    try:
        want = json.loads(want)
    except ValueError:
        pass
    if have != want:
        run = sys.argv[1].rsplit("/", 1)[0]
        sys.exit(f"error: {run} was trained with {key} = {have}, not {want}: "
                 f"remove {run} or set RUNS_DIR to another folder")
EOF_PY
}

# Trains one run unless it finished before; returns lstm-train's exit code.
train_run() {
  local name=$1 cell=$2 run_epochs=$3 clip=$4
  local run="$runs_dir/$name"
  if [[ -f "$run/summary.json" || -f "$run/exit_code" ]]; then
    check_reused_config "$run" "$cell" "$run_epochs" "$clip" || exit 1
    echo "== reusing $run"
    return "$(cat "$run/exit_code" 2>/dev/null || echo 0)"
  fi
  # lstm-train's error line goes to stderr only, so it is kept in stderr.log for the report.
  local status=0
  mkdir -p "$run"
  if [[ -f "$run/checkpoints/last.safetensors" ]]; then
    check_reused_config "$run" "$cell" "$run_epochs" "$clip" || exit 1
    echo "== resuming $run"
    "$train_bin" --resume "$run" --quiet --progress off 2> "$run/stderr.log" || status=$?
  else
    echo "== training $name into $run"
    mapfile -t overrides < <(run_overrides "$cell" "$clip" "$run_epochs")
    "$train_bin" --config "$base_config" "${overrides[@]}" --run-dir "$run" --quiet --progress off \
      2> "$run/stderr.log" || status=$?
  fi
  cat "$run/stderr.log" >&2
  echo "$status" > "$run/exit_code"
  return "$status"
}

# Runs lstm-gradflow and keeps its console report next to the CSV.
measure() {
  local label=$1 csv=$2
  shift 2
  "$gradflow_bin" "$@" --label "$label" --csv "$csv" --steps "$gradflow_steps" --batches "$gradflow_batches" \
    --batch-size "$gradflow_batch_size" --threads "$threads" > "${csv%.csv}.txt"
}

# Prints "rate|distance" of layer 0 for kind h or c from an lstm-gradflow report.
fit_of() {
  local report=$1 kind=$2
  local line
  line=$(grep "^layer 0 d$kind: " "$report")
  local rate=${line#*rate }
  rate=${rate%% *}
  local distance=${line#*threshold distance: }
  echo "$rate|$distance"
}

mkdir -p "$runs_dir"
doc_dir=$(dirname "$doc")
mkdir -p "$doc_dir/img"

# 1. Training and measurement, one cell at a time.
for cell in "${cells[@]}"; do
  run="$runs_dir/$cell"
  if ! train_run "$cell" "$cell" "$epochs" ""; then
    echo "error: training $cell failed (see $run/train.log)" >&2
    exit 1
  fi
  measure "$cell fresh" "$run/gradflow_fresh.csv" --config "$run/config.json"
  measure "$cell trained" "$run/gradflow_trained.csv" --checkpoint "$run"
done

# 2. The rnn without clipping, one epoch; it may stop on divergence.
noclip_run="$runs_dir/rnn_noclip"
noclip_status=0
train_run rnn_noclip rnn 1 0 || noclip_status=$?

# 3. Plots.
fresh_csvs=() trained_csvs=()
for cell in "${cells[@]}"; do
  fresh_csvs+=("$runs_dir/$cell/gradflow_fresh.csv")
  trained_csvs+=("$runs_dir/$cell/gradflow_trained.csv")
done
"$python" scripts/plot_gradflow.py "${fresh_csvs[@]}" -o "$doc_dir/img/gradflow_fresh.png" \
  --title "Gradient norm at distance k from the loss, fresh initialization (layer 0)"
"$python" scripts/plot_gradflow.py "${trained_csvs[@]}" -o "$doc_dir/img/gradflow_trained.png" \
  --title "Gradient norm at distance k from the loss, trained best checkpoint (layer 0)"

# 4. The report.
commit=$(git rev-parse --short HEAD)
if [[ -n $(git status --porcelain --untracked-files=no) ]]; then commit="$commit (with uncommitted changes)"; fi
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
command_line="EPOCHS=$epochs MAX_STEPS=$max_steps DATA_DIR=$data_dir RUNS_DIR=$runs_dir DOC=$doc RNN_LR=$rnn_lr"
command_line+=" GRADFLOW_STEPS=$gradflow_steps GRADFLOW_BATCHES=$gradflow_batches"
command_line+=" GRADFLOW_BATCH_SIZE=$gradflow_batch_size THREADS=$threads scripts/gradflow_report.sh"

# The valid records' clipped_fraction of a run, one per epoch, as "0.98, 0.95".
clipped_fractions() {
  "$python" - "$1/metrics.jsonl" <<'EOF'
import json, sys
values = []
for line in open(sys.argv[1]):
    line = line.strip()
    if line:
        record = json.loads(line)
        if record.get("split") == "valid" and "clipped_fraction" in record:
            values.append(f"{record['clipped_fraction']:.2f}")
print(", ".join(values) if values else "n/a")
EOF
}

# The test perplexity of a run's summary.json, in scientific notation when huge.
test_perplexity() {
  "$python" - "$1/summary.json" <<'EOF'
import json, sys
value = json.load(open(sys.argv[1]))["test_perplexity"]
print(f"{value:.2f}" if value < 1e5 else f"{value:.3g}")
EOF
}

table_rows=""
for cell in "${cells[@]}"; do
  run="$runs_dir/$cell"
  kinds=(h)
  if [[ $cell == lstm ]]; then kinds=(h c); fi
  test_ppl=$(test_perplexity "$run")
  clipped=$(clipped_fractions "$run")
  for state in fresh trained; do
    for kind in "${kinds[@]}"; do
      IFS='|' read -r rate distance < <(fit_of "$run/gradflow_$state.txt" "$kind")
      if [[ $state == fresh ]]; then
        table_rows+="| $cell | fresh | dL/d$kind | $rate | $distance | – | – |"$'\n'
      else
        table_rows+="| $cell | trained | dL/d$kind | $rate | $distance | $clipped | $test_ppl |"$'\n'
      fi
    done
  done
done

lr_of() { json_get "$runs_dir/$1/config.json" train.lr; }
clip_of() { json_get "$runs_dir/$1/config.json" train.clip_norm; }
steps_of() { json_get "$runs_dir/$1/summary.json" steps; }

noclip_log="$noclip_run/train.log"
exploding_line=$(grep -m1 "exploding gradient at step" "$noclip_log" || true)
nonfinite_line=$(grep -m1 "non-finite" "$noclip_log" || true)
if [[ -n $exploding_line ]]; then
  exploding="step $(sed -E 's/.*exploding gradient at step ([0-9]+): norm ([^ ]+).*/\1 (norm \2 before clipping)/' <<<"$exploding_line")"
else
  exploding="none"
fi
if [[ -n $nonfinite_line ]]; then
  nonfinite="step $(sed -E 's/.*non-finite (loss|gradient norm) at step ([0-9]+).*/\2 (\1)/' <<<"$nonfinite_line")"
else
  nonfinite="none"
fi
largest_norm=$("$python" - "$noclip_run/metrics.jsonl" <<'EOF'
import json, math, sys
best = None
for line in open(sys.argv[1]):
    line = line.strip()
    if line:
        record = json.loads(line)
        norm = record.get("grad_norm")
        if record.get("split") == "train" and isinstance(norm, (int, float)) and math.isfinite(norm):
            if best is None or norm > best[0]:
                best = (norm, record["step"])
print(f"{best[0]:.3g} at step {best[1]}" if best else "n/a (no train records)")
EOF
)
if [[ -f "$noclip_run/summary.json" ]]; then
  noclip_outcome="finished $(steps_of rnn_noclip) steps; test perplexity $(test_perplexity "$noclip_run")"
else
  noclip_outcome="lstm-train stopped with exit code $noclip_status: $(grep -m1 "^error: " "$noclip_run/stderr.log" || echo "no error line")"
fi

{
  cat <<EOF
# Gradient flow through time

How much of a loss's gradient reaches the recurrent state k steps back, for
the four cells at the book's small size, before and after training.

Produced by \`scripts/gradflow_report.sh\` at commit $commit on $(date -u +%Y-%m-%d)
(machine: $cpu, $(nproc) cores) with:

    $command_line

## Method

Each cell is trained with \`$base_config\` ($(json_get "$runs_dir/lstm/config.json" model.num_layers) layer,
E = $(json_get "$runs_dir/lstm/config.json" model.embedding_size), H = $(json_get "$runs_dir/lstm/config.json" model.hidden_size), optimizer $(json_get "$runs_dir/lstm/config.json" train.optimizer), init $(json_get "$runs_dir/lstm/config.json" model.init)) with \`model.cell\` set to the
cell, data from \`$data_dir\`, train.epochs $epochs and train.max_steps $max_steps
(0 = whole epochs), and these learning rates and clipping thresholds:

EOF
  for cell in "${cells[@]}"; do
    echo "- $cell: train.lr $(lr_of "$cell"), train.clip_norm $(clip_of "$cell"), $(steps_of "$cell") steps"
  done
  cat <<EOF

\`lstm-gradflow\` measures each model twice: "fresh" is the initialization
\`lstm-train\` starts from (the run's own config.json, so the same seed), and
"trained" is the run's best checkpoint by validation perplexity. It puts the
loss on the last of T = $gradflow_steps steps only (cross-entropy of the
$gradflow_batch_size streams' predictions), backpropagates through all T
steps from a zero state, and averages the norm of dL/dh (and dL/dc for the
lstm) at each distance k over $gradflow_batches consecutive windows of the
valid split, without dropout.

- rate per step: exp of the least-squares slope of log norm over k, fitted
  over the distances whose norm is finite and above 1e-30.
- distance to 1e-3: the first k whose norm is below 1e-3 times the k = 0 norm
  ("above 1e3" marks a norm that grew past 1e3 times instead), or "none" when
  neither happens within T steps.
- clipped fraction: share of each epoch's updates whose gradient norm was
  clipped, from the valid records of the run's metrics.jsonl, one per epoch.
- test perplexity: summary.json of the run (best checkpoint).

## Results

| cell | state | gradient | rate per step | distance to 1e-3 | clipped fraction per epoch | test perplexity |
| --- | --- | --- | --- | --- | --- | --- |
$table_rows
Solid lines are |dL/dh| and dashed lines |dL/dc| (lstm), layer 0, log scale:

![Gradient norm by distance, fresh initialization](img/gradflow_fresh.png)

![Gradient norm by distance, trained best checkpoints](img/gradflow_trained.png)

The per-distance CSV files and console reports are in \`$runs_dir/<cell>/gradflow_{fresh,trained}.{csv,txt}\`.

## The rnn without clipping

The rnn run repeated for 1 epoch with train.clip_norm 0 and train.lr $(lr_of rnn_noclip)
(\`$noclip_run\`):

- first gradient norm above 1e4 (the exploding-gradient warning in train.log): $exploding
- first non-finite loss or gradient norm (train.log): $nonfinite
- largest finite gradient norm (train records of metrics.jsonl, one per step): $largest_norm
- outcome (summary.json, else lstm-train's error line): $noclip_outcome
EOF
} > "$doc.tmp"
mv "$doc.tmp" "$doc"
echo "wrote $doc and $doc_dir/img/gradflow_{fresh,trained}.png"
