#!/usr/bin/env bash
# Install cryotorch (and the CPU build of torch if no torch is installed), then run the main
# job, cryotorch-classify. Arguments (Hydra overrides) are passed on; with none, it simulates
# a small two-class data set, classifies it and prints the accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e .
# The built-in structures (adenylate kinase open/closed) come from MDAnalysisTests; its own
# dependency, MDAnalysis, is not needed to read them.
python3 -c "import importlib.util as u; exit(u.find_spec('MDAnalysisTests') is None)" \
    || python3 -m pip install -q --no-deps MDAnalysisTests
exec cryotorch-classify "$@"
