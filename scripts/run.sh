#!/usr/bin/env bash
# Install cryotorch (and the CPU build of torch if no torch is installed), then run the main
# job. Arguments are passed on; with none, it runs the built-in demo.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e .
exec cryotorch-convert "$@"
