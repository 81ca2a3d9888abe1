#!/usr/bin/env bash
# GPU check of the trainer (issue 4), for one H200/H100: the study's baseline model
# (768 x 12 layers, 12 heads, vocabulary 50,257 untied) at seq_len 1024, bf16 autocast,
# torch.compile, trained twice on the same batches: loss recording on, then off.
# Prints steady-state tokens/s and MFU of each, and the cost of recording.
#
# Offline: builds its own data set from the Python standard library (bpe:8192, seq_len 1024,
# every window of each file); the model pins vocab_size 50257 so it has the study's size.
# About 5-6 minutes on an H200 (data build ~1 min, two compiles, 2 x STEPS steps).
#
# The trainer writes config.toml with tomli_w, which the GPU image may lack. Before the call,
# here (once):
#   mkdir -p .gpu_vendor && cp -r .venv/lib/python3*/site-packages/tomli_w .gpu_vendor/
#   grep -qx '/.gpu_vendor/' .git/info/exclude || echo '/.gpu_vendor/' >> .git/info/exclude
# then run:  bash bench/gpu_check.sh   with carry [".gpu_vendor"]   (timeout_s ~540)
#
# Knobs (environment): STEPS (40), BATCH (128 sequences per step), MICRO (32), PYTHON (python3),
# CHECK_HOME (/tmp/gpu_check_home), OUT (where copies of metrics/run.json go, if set).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
STEPS=${STEPS:-40}
BATCH=${BATCH:-128}
MICRO=${MICRO:-32}
CHECK_HOME=${CHECK_HOME:-/tmp/gpu_check_home}
export PYTHONUNBUFFERED=1
[ -d .gpu_vendor ] && export PYTHONPATH="$PWD/.gpu_vendor${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
$PY -c "import torch, numpy, pyarrow; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" || exit 1
$PY -c "import tomli_w" 2>/dev/null || { echo "tomli_w is missing: see this script's header (.gpu_vendor)"; exit 1; }

# --- data set: stdlib, bpe:8192, seq_len 1024, every window ------------------------------------
start=$(date +%s)
$PY - "$CHECK_HOME" "$STEPS" "$BATCH" <<'EOF' || exit 1
import sys
from train.dataset import build_dataset, open_dataset, list_datasets
home, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if "gpucheck" not in list_datasets(home):
    build_dataset(home, "gpucheck", source="stdlib", tokenizer="bpe:8192", seq_len=1024,
                  tokens=steps * batch * 1025, windows="all", allow_short=True, progress=False)
ds = open_dataset(home, "gpucheck")
print(f"data set: {ds.n_sequences} sequences of {ds.seq_len + 1} tokens, vocab {ds.vocab_size}, "
      f"{ds.n_sequences // batch} steps of {batch} available")
EOF
echo "data build: $(( $(date +%s) - start )) s"

# --- two runs on the same batches: recording on, then off ---------------------------------------
for record in true false; do
  run="gpu-record-$record"
  rm -rf "$CHECK_HOME/runs/$run" "$CHECK_HOME/lossdb/losses/run=$run" "$CHECK_HOME/lossdb/rollups"/*/"run=$run"
  start=$(date +%s)
  $PY cli.py train --home "$CHECK_HOME" --config configs/baseline.toml --data gpucheck --run "$run" \
      --device cuda --compile --tokens 0 \
      --set model.vocab_size=50257 --set train.batch_size="$BATCH" --set train.micro_batch_size="$MICRO" \
      --set train.log_every=5 --set train.checkpoint_every=0 --set lossdb.record="$record" 2>&1 \
    | grep -v "^step " | tail -20
  echo "run $run: $(( $(date +%s) - start )) s wall (compile and checkpoints included)"
done

# --- summary --------------------------------------------------------------------------------------
$PY - "$CHECK_HOME" <<'EOF'
import json, sys
from pathlib import Path
home = Path(sys.argv[1])
figures = {}
for record in ("true", "false"):
    folder = home / "runs" / f"gpu-record-{record}"
    if not (folder / "metrics.jsonl").exists():
        print(f"recording {record}: no metrics (the run failed)")
        continue
    lines = [json.loads(l) for l in (folder / "metrics.jsonl").read_text().splitlines()]
    steady = lines[2:] or lines  # the first 10 steps hold compile and warm-up
    tps = sum(l["perf/tokens_per_s"] for l in steady) / len(steady)
    mfu = sum(l.get("perf/mfu", 0.0) for l in steady) / len(steady)
    info = json.loads((folder / "run.json").read_text())
    figures[record] = tps
    print(f"recording {record:<5}: {tps:>10,.0f} tokens/s  MFU {100 * mfu:5.1f}%  "
          f"(steps {info['steps']}, final loss {lines[-1]['train/loss']:.3f}, {info['device']})")
if len(figures) == 2:
    print(f"recording cost: {100 * (1 - figures['true'] / figures['false']):+.2f}% tokens/s")
rows = list(home.glob("lossdb/losses/run=gpu-record-true/*/*.parquet"))
if rows:
    import pyarrow.parquet as pq
    n = sum(pq.ParquetFile(p).metadata.num_rows for p in rows)
    info = json.loads((home / "runs" / "gpu-record-true" / "run.json").read_text())
    print(f"loss rows: {n:,} (tokens_trained {info['tokens_trained']:,})")
EOF
if [ -n "${OUT:-}" ]; then
  for record in true false; do
    cp "$CHECK_HOME/runs/gpu-record-$record/metrics.jsonl" "$OUT/metrics-record-$record.jsonl" 2>/dev/null
    cp "$CHECK_HOME/runs/gpu-record-$record/run.json" "$OUT/run-record-$record.json" 2>/dev/null
  done
fi
exit 0
