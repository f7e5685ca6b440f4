#!/usr/bin/env bash
# The GPU measurements that the second speed round owes (docs/performance.md, "Speed round 2"), most decisive first,
# each one writing its output into DIR as soon as it finishes. A device call lasts at most 10 minutes, so start it in the
# background of one call and collect it in later ones:
#
#   setsid nohup bash benchmarks/gpu_speed_round.sh /tmp/speed > /tmp/speed.log 2>&1 < /dev/null &
#   cat /tmp/speed.log; tar czf $OUT/speed.tar.gz -C /tmp speed      # later: progress, and what is there so far
#
# A step that fails is reported and the next one runs; a run cut short still leaves what it measured.
# CPU dry run (the graph modes are skipped there, so this checks the commands, not the speed):
#   SECONDS_PER_CONFIG=0.5 ABLATION_STEPS=20 ABLATION_FLAGS= bash benchmarks/gpu_speed_round.sh /tmp/speed
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DIR=${1:?usage: bash benchmarks/gpu_speed_round.sh DIR}
SECONDS_PER_CONFIG=${SECONDS_PER_CONFIG:-5}  # throughput.py --seconds for every configuration
ABLATION_STEPS=${ABLATION_STEPS:-5000}      # gradient steps of each run of the TF32 learning ablation
ABLATION_FLAGS=${ABLATION_FLAGS---compile}  # the mode both ablation runs use (empty: eager)
PY=${PY:-python3}
case $PY in */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;; esac  # a path works from DIR too (step 8)
source benchmarks/use_wheels.sh  # a GPU machine without network: the packages its Python lacks (fetch_device_wheels.sh)
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

step() {  # step NAME COMMAND...: run it, its output in DIR/NAME.txt, and say how it ended and how long it took
  local name=$1 t0 rc
  shift
  echo "== $name: $*"
  t0=$(date +%s)
  "$@" > "$DIR/$name.txt" 2>&1
  rc=$?
  echo "== $name: exit $rc after $(( $(date +%s) - t0 )) s"
}

# The TF32 ablation's dataset (step 8), a 1M-step build (2-4 min on one core of a Xeon), is built from the start in the
# background on one CPU core, so that it does not take device time there (the GPU steps keep the other cores)
OMP_NUM_THREADS=1 $PY tools/make_dataset.py hopper-medium --workers 1 > "$DIR/build_hopper-medium.txt" 2>&1 &
ablation_build=$!

step machine bash -c "$PY -c 'import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)'; \
  nvidia-smi || true"
S=$SECONDS_PER_CONFIG
# 0. CQL at the results grid's own configuration (three and five seeds in one process, CUDA graphs, one and eight steps
#    per replay), which decides whether a 300k-step CQL cell fits a 15-minute session (docs/results.md): four
#    configurations, SECONDS_PER_CONFIG (5 s) each timed
step cql_cells $PY benchmarks/throughput.py --algos cql --modes cuda-graphs --num-seeds 3 5 --steps-per-replay 1 8 \
  --seconds "$S" --out "$DIR/gpu_cql_cells.json"
# 1. MISA's fused HMC chain, the figure most likely to change what a GPU session can train: does it compile
#    here, does it compute what the torch reference computes, and how fast is MISA's step with it
step fused_compile $PY benchmarks/compile_fused_hmc.py
step fused_check $PY benchmarks/check_cuda_graphs.py --algos misa --fused-hmc --steps 200
step fused_speed $PY benchmarks/throughput.py --algos misa --modes cuda-graphs compile+cuda-graphs \
  --fused-hmc False True --num-seeds 1 16 --seconds "$S" --out "$DIR/gpu_fused_hmc.json"
# 2. every mode of every script, with the operation count of the eager step
step modes $PY benchmarks/throughput.py --modes eager cuda-graphs compile+cuda-graphs --seconds "$S" --count-ops \
  --out "$DIR/gpu_modes.json"
# 3. many seeds in one process
step num_seeds $PY benchmarks/throughput.py --modes cuda-graphs compile+cuda-graphs --num-seeds 1 4 16 64 \
  --seconds "$S" --out "$DIR/gpu_num_seeds.json"
# 4. several steps per graph replay (the baselines, which are launch-bound)
step replay $PY benchmarks/throughput.py --algos td3_bc iql cql --modes cuda-graphs compile+cuda-graphs \
  --steps-per-replay 1 8 32 --seconds "$S" --out "$DIR/gpu_replay.json"
# 5. where MISA's and CQL's time goes
step profile $PY benchmarks/throughput.py --algos misa cql --modes cuda-graphs compile+cuda-graphs --seconds "$S" \
  --profile 3
# 6. TF32 matrix products
step tf32 $PY benchmarks/throughput.py --modes cuda-graphs compile+cuda-graphs --tf32 --seconds "$S" \
  --out "$DIR/gpu_tf32.json"
# 7. the fast paths compute what the eager step computes
step check_graphs $PY benchmarks/check_cuda_graphs.py --num-seeds 4 --steps-per-replay 5
step check_compile $PY benchmarks/check_cuda_graphs.py --compile
# 8. TF32 learning ablation: the same seed in FP32 and in TF32, then the side-by-side report
step ablation_data wait $ablation_build
for precision in fp32 tf32; do
  flag=$([ $precision = tf32 ] && echo --tf32)
  # shellcheck disable=SC2086
  step "ablation_$precision" bash -c "cd '$DIR' && $PY '$ROOT/misa_continuous.py' --env-id hopper-medium \
    --total-timesteps $ABLATION_STEPS --eval-freq $(( ABLATION_STEPS / 5 > 0 ? ABLATION_STEPS / 5 : 1 )) \
    --log-freq $(( ABLATION_STEPS / 50 > 0 ? ABLATION_STEPS / 50 : 1 )) $ABLATION_FLAGS $flag --run-name $precision \
    --overwrite"
done
step compare $PY benchmarks/compare_runs.py "$DIR/runs/fp32" "$DIR/runs/tf32" --out "$DIR/tf32_ablation.md"
echo "== all steps ended; results in $DIR"
