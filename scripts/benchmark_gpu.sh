#!/usr/bin/env bash
# Every GPU figure the README's Speed section asks for, in one command on a CUDA machine:
#   bash scripts/benchmark_gpu.sh [OUTPUT_DIR]        (default outputs/gpu; needs ./.venv from scripts/setup.sh,
#                                                      or the interpreter named by $PYTHON)
# 1. the tests that need a CUDA device; 2. scripts/benchmark.py in float32, bfloat16 and bfloat16 compiled (each
# benchmark with and without the fast paths, --reference);
# 3. scripts/benchmark_cnn.py in float32 and bfloat16; 4. a short real fine-tuning run through the Trainer: the small
# standard ViT of recipe vit-fashion-mnist trained for 300 steps into OUTPUT_DIR/finetune-source (the recipe's own
# source, outputs/vit-fashion-mnist/repo, is not in a checkout), then bcos-vit-fashion-mnist B-cosified from it and
# fine-tuned for 300 steps; 5. the reproductions at smoke size on the GPU (reproduce_guidance.py --quick, and the ViT
# B-cosification reproduction on 6,000 images, one seed), which otherwise run only on CPUs here.
# Each step's output is kept in OUTPUT_DIR/<step>.log and the benchmarks' figures
# in OUTPUT_DIR/vit.csv and OUTPUT_DIR/cnn.csv (scripts/plot_speed.py draws them); a failing step does not stop the
# others, and the exit status says whether any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-outputs/gpu}"
mkdir -p "$out"
python="${PYTHON:-.venv/bin/python}"
failed=0

step() {
  local name="$1"
  shift
  echo "== $name: $*"
  if "$@" > "$out/$name.log" 2>&1; then tail -n 12 "$out/$name.log"; else failed=1; echo "!! $name failed:"; tail -n 30 "$out/$name.log"; fi
}

"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" || exit 1
step cuda-tests "$python" -m pytest -q -rs tests/test_conformance_export.py tests/test_explanations.py
step vit-clip-float32 "$python" scripts/benchmark.py --device cuda --dtype float32 --batch-size 64 --repeats 7 --reference --csv "$out/vit.csv"
step vit-clip-bfloat16 "$python" scripts/benchmark.py --device cuda --dtype bfloat16 --batch-size 64 --repeats 7 --reference --csv "$out/vit.csv"
step vit-clip-bfloat16-compiled "$python" scripts/benchmark.py --device cuda --dtype bfloat16 --batch-size 64 --repeats 7 --compile --reference --csv "$out/vit.csv"
step cnn-float32 "$python" scripts/benchmark_cnn.py --device cuda --dtype float32 --batch-size 64 --repeats 7 --reference --csv "$out/cnn.csv"
step cnn-bfloat16 "$python" scripts/benchmark_cnn.py --device cuda --dtype bfloat16 --batch-size 64 --repeats 7 --reference --csv "$out/cnn.csv"
step finetune-source "$python" scripts/finetune.py --recipe vit-fashion-mnist --device cuda --max-steps 300 \
  --output-dir "$out/finetune-source"
step finetune "$python" scripts/finetune.py --recipe bcos-vit-fashion-mnist --device cuda --max-steps 300 \
  --source "$out/finetune-source/repo" --output-dir "$out/finetune"
step guidance-quick "$python" scripts/reproduce_guidance.py --quick --work-dir "$out/guidance-quick" \
  --output-dir "$out/guidance-quick/report"
step reproduction-small "$python" scripts/reproduce.py --seeds 0 --epochs 1 --source-epochs 1 --max-train-samples 6000 \
  --max-eval-samples 1000 --device cuda --work-dir "$out/reproduction" --output-dir "$out/reproduction/report"
exit "$failed"
