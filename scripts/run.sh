#!/usr/bin/env bash
# Install cryotorch (and the CPU build of torch if no torch is installed), then run the main
# job, cryotorch-classify. Arguments (Hydra overrides) are passed on; with none, it simulates
# a small two-class data set, classifies it and prints the accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e .
exec cryotorch-classify "$@"
