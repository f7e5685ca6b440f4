# Sourced by the GPU scripts (gpu_speed_round.sh, results_grid.sh). On a machine without network access whose Python
# lacks this project's packages, install the wheels that benchmarks/fetch_device_wheels.sh fetched (WHEELS, default
# .whl/ in the checkout) into a folder of their own and put it first on PYTHONPATH. Nothing happens where PY already
# imports them (a machine set up with the README's install) or where there is no such folder. PY is the calling
# script's python.
WHEELS=${WHEELS:-.whl}
if ! ${PY:-python3} -c "import gymnasium, minari, mujoco, tyro" 2> /dev/null \
    && ls "$WHEELS"/*.whl > /dev/null 2>&1; then
  WHEEL_SITE=${WHEEL_SITE:-/tmp/misa-wheels-site}
  ${PY:-python3} -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WHEEL_SITE" "$WHEELS"/*.whl || { echo "error: installing the wheels in $WHEELS failed" >&2; exit 1; }
  export PYTHONPATH="$WHEEL_SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "using the $(ls "$WHEELS"/*.whl | wc -l) wheels of $WHEELS (installed in $WHEEL_SITE)"
fi
