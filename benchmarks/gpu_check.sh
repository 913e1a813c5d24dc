#!/usr/bin/env bash
# The benchmark on one GPU, in under 5 minutes: trainer=gpu with bf16-mixed, every frame resident on the
# device, epochs long enough for a GPU (the train split 200 times over, batch 512), the seed-style loops
# timed on one batch and scaled to the epoch, and stage 1 with model.compile=true beside eager.
#   bash benchmarks/gpu_check.sh [more bench.py flags]        -> benchmarks/results_gpu.json
# Issue 6 target on one H100: stage 1 >= 20,000 images/s (pretrain_ae.fit_images_per_s).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" benchmarks/bench.py --accelerator gpu --precision bf16-mixed --resident \
    --frames 600 --tile 200 --batch-size 512 --rounds 2 --seed-batches 1 --compile \
    --out benchmarks/results_gpu.json "$@"
"$PY" - <<'PY'
import json
s1 = json.load(open("benchmarks/results_gpu.json"))["pretrain_ae"]
rate = s1["fit_images_per_s"]
print(f"stage 1 through Trainer.fit: {rate:,.0f} images/s ({'meets' if rate >= 20000 else 'misses'} the 20,000 target)")
PY
