#!/bin/bash
# The checks that need a CUDA GPU, as one command for a lent GPU machine (a few minutes on an
# H200): the CUDA tests (`pytest -m gpu`: kernels against the CPU, a whole run against the same
# run on CPU, every kind of run, a resumed run), the slice kernels' rates, and the benchmark at
# box 128, K = 2, 4, 8 with device=cuda, eager and torch.compile (particle·class/s and peak GPU
# memory; RELION is not there). Their device handling is checked without a GPU, on an emulated
# device, by tests/test_fake_cuda.py. Writes its logs and tables to $OUT (default gpu_out/).
# The wheels that scripts/gpu_wheels.sh put in .whl/ are installed first. On the device tool:
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
status=0
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
# The files with gpu tests, named: collecting all of tests/ would import what the image lacks
# (nbformat, for the notebooks' tests).
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_ctf.py tests/test_fourier.py \
  tests/test_slices.py tests/test_engine.py tests/test_resume.py tests/test_symmetry.py \
  tests/test_mixed_optics.py 2>&1 \
  | tee "$OUT/pytest_gpu.log" || status=1
python3 scripts/bench_slices.py --device cuda --kernels torch compiled 2>&1 \
  | tee "$OUT/bench_slices_cuda.md" || status=1
python3 scripts/benchmark.py --device cuda --no-relion --boxes 128 --classes 2 4 8 \
  --kernels torch compiled --iterations 10 --threads 8 --workdir /tmp/gpu_bench \
  --output "$OUT/benchmark_cuda.md" 2>&1 | tee "$OUT/benchmark_cuda.log" || status=1
exit $status
