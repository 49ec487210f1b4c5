#!/usr/bin/env bash
# Everything this project measures on a CUDA machine, in one run of at most 8 minutes (the stages' time limits
# add up to 7 min 20 s; not yet run on a GPU). Needs the repo's .venv (scripts/setup.sh) and a CUDA GPU; no network.
#
#   bash benchmarks/gpu.sh [OUT_DIR]        # default runs/gpu-bench; tables in OUT_DIR/*.txt
#
# 1. the CUDA tests: featurizers on the GPU equal the CPU ones, SpecAugment draws the same masks there
# 2. featurize_bench.py --device cuda: WhisperLogMel on the GPU vs WhisperFeatureExtractor (numpy, torch)
# 3. train_bench.py --device cuda: a whisper-small-architecture model (init-model, random weights), bf16,
#    30 s windows, batch 16, fed by StreamLoader (features on the GPU) and by WebDataset with features
#    computed in CPU workers, in the same run: samples/s, audio hours/s, data-wait %, peak GPU memory.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${1:-runs/gpu-bench}
WORKERS=${WORKERS:-$(( $(nproc) > 8 ? 8 : $(nproc) ))}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

"$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: torch sees no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

echo "== 1/3 CUDA tests"
timeout 60 "$PYTHON" -m pytest -q -rs tests/features -k "cuda or layout_dtype_or_device" | tee "$OUT/cuda-tests.txt"
if grep -q "skipped" "$OUT/cuda-tests.txt"; then echo "gpu.sh: a CUDA test was skipped" >&2; exit 1; fi

echo "== 2/3 featurize_bench --device cuda"
timeout 90 "$PYTHON" benchmarks/featurize_bench.py --device cuda --batch 16 --repeats 5 | tee "$OUT/featurize.txt"

echo "== 3/3 train_bench --device cuda, whisper-small architecture, bf16, 30 s windows"
if [ ! -f "$OUT/whisper-small/model.safetensors" ]; then
  rm -rf "$OUT/whisper-small"
  timeout 60 "$PYTHON" -m streamtrain init-model --arch whisper-small --out "$OUT/whisper-small"
fi
timeout 230 "$PYTHON" benchmarks/train_bench.py --device cuda --recipe whisper-finetune --steps 20 \
  --workers "$WORKERS" model.pretrained="$OUT/whisper-small" data.batch_size=16 train.micro_batches=1 \
  train.mixed_precision=bf16 | tee "$OUT/train.txt"
echo "gpu.sh: done; tables in $OUT/"
