#!/usr/bin/env bash
# Install cryotorch with its test dependencies (the CPU build of torch first, if no torch is
# installed; RELION from Debian's packages when running as root on Debian/Ubuntu), then run
# the tests. Tests that need RELION or a GPU skip, saying why, where those are absent.
# Set CRYOTORCH_NO_RELION=1 to skip installing RELION. Arguments are passed to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[dev]"
if ! command -v relion_project >/dev/null && [ "${CRYOTORCH_NO_RELION:-0}" != 1 ] \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq relion >/dev/null) \
        || echo "RELION could not be installed: its conformance tests will skip"
fi
exec python3 -m pytest "$@"
