#!/usr/bin/env bash
# Everything in toklip that needs a GPU, in one command (run from anywhere in a toklip checkout):
#   1. the kernels' test suite on the GPU (GPU-only tests + the interpreter tests, now compiled on CUDA),
#   2. the ahead-of-time compile check of every autotune candidate (registers, spills, shared memory),
#   3. bench_attention.py, bench_lookup_mlp.py, bench_encode.py, bench_train.py, bench_tokenize.py (issue 15's
#      GPU goals: >= 10x the batch-1 loop, the bf16 roofline share) and bench_generate.py (issue 12's: GPT-B
#      with the incremental TokLIP vs re-encoding, batch 32 and 128).
# Results, logs and test reports go to benchmarks/results/<device>/; commit that folder.
#
#   bash benchmarks/run_gpu.sh           # full grids (about an hour on an H100, most of it FlexAttention compiles)
#   QUICK=1 bash benchmarks/run_gpu.sh   # goal shapes only (minutes)
set -uo pipefail
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'run_gpu.sh needs a CUDA GPU')" || exit 2
python -c "import toklip_kernels" 2>/dev/null || pip install -q -c constraints.txt --no-deps -e kernels
OUT="benchmarks/results/$(python -c 'import sys; sys.path.insert(0, "benchmarks"); import _harness; print(_harness.device_slug())')"
mkdir -p "$OUT"
SHAPES=(); [ -n "${QUICK:-}" ] && SHAPES=(--shapes goal)
BATCH=(--batch 64,128); [ -n "${QUICK:-}" ] && BATCH=(--batch 128)
status=0

echo "== 1/8 GPU tests -> $OUT/gpu_tests.log"
(cd kernels && python -m pytest -q -p no:cacheprovider --junitxml="../$OUT/gpu_tests.xml") 2>&1 | tee "$OUT/gpu_tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== 2/8 compile check of every launch config (sm_$(python -c 'import torch; p=torch.cuda.get_device_capability(); print(p[0]*10+p[1])'))"
python -m toklip_kernels.aot --all --head-dims 64,72,80,128 \
  --arch "$(python -c 'import torch; p=torch.cuda.get_device_capability(); print(p[0]*10+p[1])')" 2>&1 | tee "$OUT/aot.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== 3/8 attention"
python benchmarks/bench_attention.py "${SHAPES[@]}" --out "$OUT" 2>&1 | tee "$OUT/bench_attention.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "== 4/8 lookup + MLP"
python benchmarks/bench_lookup_mlp.py "${SHAPES[@]}" --out "$OUT" 2>&1 | tee "$OUT/bench_lookup_mlp.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "== 5/8 TokLIP-L-384 image path"
python benchmarks/bench_encode.py "${BATCH[@]}" --out "$OUT" 2>&1 | tee "$OUT/bench_encode.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "== 6/8 TokLIP-S-256 training step"
python benchmarks/bench_train.py --out "$OUT" 2>&1 | tee "$OUT/bench_train.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "== 7/8 tokenize: full-size LlamaGen VQ at 256 px, toklip tokenize vs the batch-1 fp32 loop"
NTOK=1024; [ -n "${QUICK:-}" ] && NTOK=256
python benchmarks/bench_tokenize.py --vq llamagen --image-size 256 --n "$NTOK" --batch-size 64 --workers 8 \
  --rounds 2 --modes fp32,bf16 --out "$OUT" 2>&1 | tee "$OUT/bench_tokenize.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "== 8/8 generate: GPT-B sampling, plain / incremental TokLIP / re-encoding the prefix"
GEN=(); [ -n "${QUICK:-}" ] && GEN=(--reps 1 --warmup 1 --max-seconds 20)
python benchmarks/bench_generate.py "${GEN[@]}" --out "$OUT" 2>&1 | tee "$OUT/bench_generate.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo
echo "== goals"
grep -h "goal " "$OUT"/bench_*.log
echo "results in $OUT (exit status $status)"
exit $status
