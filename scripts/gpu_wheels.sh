#!/bin/bash
# Run here, where pip reaches the package registry: puts in .whl/ (ignored by git) the wheels of
# what the lent GPU machines' image lacks (Python 3.12 there; torch, numpy, pandas, numba,
# tensorboard, tqdm, scipy and pyarrow are in the image). scripts/gpu_check.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d .whl \
  mrcfile==1.5.4 starfile==0.5.13 hydra-core==1.3.8 omegaconf==2.3.1 gemmi==0.7.5 \
  torch-fourier-slice==0.6.0 torch-image-interpolation==0.6.0 torch-grid-utils==0.6.0 \
  torch-ctf==0.6.0
# antlr4-python3-runtime (hydra's parser) is published as source only: build its pure-Python wheel.
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls .whl
