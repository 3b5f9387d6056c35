#!/usr/bin/env bash
# Build cryotorch's wheel, install it into a fresh virtual environment (no editable install, no
# source tree on the path) and run the installed commands from an empty folder: what a user
# gets from `pip install cryotorch-*.whl`. Prints one line per check; exits non-zero on the
# first failure. Usage: bash scripts/check_wheel.sh [WORK_DIR]  (default: a temporary folder)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d -t cryotorch-wheel-XXXXXX)}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"

python3 -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$repo"
wheel="$(ls "$work"/dist/cryotorch-*.whl)"
echo "built $(basename "$wheel")"
python3 - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
needed = ["cryotorch/configs/classify.yaml", "cryotorch/configs/simulate.yaml",
          "cryotorch/configs/experiment/relion_like.yaml",
          "cryotorch/simulate/data/adk_open.pdb.gz", "cryotorch/simulate/data/adk_closed.pdb.gz"]
missing = [n for n in needed if n not in names]
assert not missing, f"the wheel lacks {missing}"
assert not any(n.startswith(("tests/", "configs/")) for n in names), "stray top-level files"
print(f"wheel holds the configs and the built-in structures ({len(names)} files)")
PY

python3 -m venv "$work/venv"
py="$work/venv/bin/python"
# The CPU build of torch first, as the README says (a bare torch requirement pulls a CUDA build).
"$py" -m pip install -q --disable-pip-version-check torch==2.13.0
"$py" -m pip install -q --disable-pip-version-check "$wheel"
mkdir -p "$work/run"
cd "$work/run"
export PATH="$work/venv/bin:$PATH"
unset PYTHONPATH
where="$("$py" -c 'import cryotorch, os; print(os.path.dirname(cryotorch.__file__))')"
case "$where" in
    "$work/venv/"*) echo "cryotorch imported from the venv: $where" ;;
    *) echo "cryotorch imported from $where, not from the venv" >&2; exit 1 ;;
esac

cryotorch-classify --help > help.txt
grep -q "experiment: cryosparc_like" help.txt  # the packaged config groups
echo "cryotorch-classify --help: OK"
cryotorch-convert > convert.txt
grep -q "round trip OK" convert.txt
echo "cryotorch-convert (demo): $(tail -n 1 convert.txt)"
cryotorch-simulate n_particles=40 output_dir=sim > simulate.txt
test -f sim/particles.star
echo "cryotorch-simulate: $(tail -n 1 simulate.txt)"
cryotorch-classify logger.quiet=true output_dir=demo > classify.txt
grep -q "accuracy against the true classes" classify.txt
echo "cryotorch-classify (demo): $(tail -n 1 classify.txt)"
