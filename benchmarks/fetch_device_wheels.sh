#!/usr/bin/env bash
# Wheels for a GPU machine that cannot reach PyPI and whose Python already has PyTorch (with Triton) and the usual
# scientific stack (numpy, h5py, scipy, pandas, matplotlib, seaborn, statsmodels, tensorboard, tqdm, typer, rich), as
# a cloud image often does: this downloads, on a machine that can reach PyPI, the packages such an image lacks and the
# scripts, the dataset builder, benchmark.py and the GPU checks need, at the versions constraints.txt pins, for the
# GPU machine's Python (23 MB for 3.12, 18 of them MuJoCo). Take the folder along with the checkout;
# benchmarks/use_wheels.sh installs it there (the GPU scripts source it).
#
#   bash benchmarks/fetch_device_wheels.sh                 # into .whl/, for CPython 3.12 on x86-64 Linux
#   PY_VERSION=3.11 DEST=wheels bash benchmarks/fetch_device_wheels.sh
#
# Left out: gymnasium-robotics and PettingZoo (only Minari's D4RL/ datasets need them; add them to NAMES for those),
# and report.py's rliable and arch: arch 7.2 fails with pandas 3, which such an image may hold, so the report runs
# where the runs' CSVs come back to (results_grid.sh packs them and goes on when the report fails).
set -euo pipefail
cd "$(dirname "$0")/.."

PY_VERSION=${PY_VERSION:-3.12}
DEST=${DEST:-.whl}
NAMES=${NAMES:-"gymnasium Farama-Notifications mujoco glfw PyOpenGL minari tyro docstring_parser typeguard typing_extensions"}
PY=${PY:-python3}

mkdir -p "$DEST"
for name in $NAMES; do
  pin=$(grep -i "^${name}==" constraints.txt || true)
  if [ -z "$pin" ]; then
    echo "error: $name is not pinned in constraints.txt" >&2
    exit 1
  fi
  # manylinux tags from new to old: pip matches each tag exactly, so several are named
  if ! $PY -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DEST" "$pin" 2>/dev/null; then
    # no wheel on PyPI (rliable ships a source archive only): build one here, which must come out pure Python
    $PY -m pip wheel --quiet --no-deps -w "$DEST" "$pin"
    if ! ls "$DEST" | grep -qi "^${name//-/_}-.*-py3-none-any.whl$"; then
      echo "error: $pin has no wheel for Python $PY_VERSION and does not build as a pure-Python one" >&2
      exit 1
    fi
  fi
done
echo "$(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1), in $DEST (Python $PY_VERSION)"
