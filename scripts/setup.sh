#!/usr/bin/env bash
# Create .venv with the pinned torch/torchaudio pair and streamtrain (editable, with test extras).
# torchaudio 2.11's PyPI wheel is CUDA-linked: it loads (and runs on the CPU) beside torch 2.14.1.
# openai-whisper only for its tokenizer files (`streamtrain init-model`), so without its dependencies
# (numba, triton); tiktoken's own (regex, requests) come with streamtrain's.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.14.1 torchaudio==2.11.0
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test]"
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps openai-whisper==20250625 tiktoken==0.14.0
.venv/bin/python -c "import torch, torchaudio, streamtrain; print(f'streamtrain ready: torch {torch.__version__}, torchaudio {torchaudio.__version__}')"
