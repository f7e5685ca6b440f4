#!/usr/bin/env bash
# The results grid of docs/results.md: build the datasets in parallel over the CPU cores, run every script on every
# dataset for SEEDS seeds at one gradient-step budget, then make the tables, curves and robust aggregates.
#
#   STEPS=300000 SEEDS=3 bash benchmarks/results_grid.sh                         # the full grid (needs a GPU)
#   SCRIPTS="baselines/cql_continuous.py misa_continuous.py" bash benchmarks/results_grid.sh  # the cells still owed
#   STEPS=20 EVAL_FREQ=10 SEEDS=1 ENVS=hopper-medium-replay FINAL_EPISODES=2 bash benchmarks/results_grid.sh  # dry run
#
# Every knob is an environment variable (defaults below). Runs land in $OUT/runs/ENV__SCRIPT__SEED (benchmark.py's
# names; rerunning continues finished or checkpointed runs with --resume), each with its evaluations.csv and
# provenance.csv (command, wall time, machine, commit, build of the dataset), and a checkpoint.pt at every evaluation
# (--save-model: an interrupted run continues from it, and the representation picture reads it). The two CSVs of every
# run are packed into $OUT/results-runs.tar.gz, one small file to bring back from a GPU machine and unpack into
# docs/results/:
#   tar xzf results-runs.tar.gz -C docs/results    # adds or replaces docs/results/runs/ENV__SCRIPT__SEED/
# and benchmarks/report.py writes $OUT/report/. Where the checkout's .git does not travel (a device machine gets a copy
# of the working tree), name the commit for provenance.csv: BENCHMARK_COMMIT=<git rev-parse HEAD of the checkout>.
# On a device machine whose own $OUT is emptied before every call, give the grid a folder of its own (OUT=/tmp/grid),
# start it in the background (setsid nohup) and copy results-runs.tar.gz into that $OUT when collecting: docs/results.md,
# "How to fill the rest", has the two calls.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-300000}            # gradient steps of every run, the same for all four algorithms
EVAL_FREQ=${EVAL_FREQ:-10000}     # periodic evaluations (10 episodes each); the last one runs FINAL_EPISODES
FINAL_EPISODES=${FINAL_EPISODES:-100}
SEEDS=${SEEDS:-3}
ENVS=${ENVS:-"halfcheetah-medium halfcheetah-medium-replay halfcheetah-medium-expert hopper-medium hopper-medium-replay hopper-medium-expert walker2d-medium walker2d-medium-replay walker2d-medium-expert"}
SCRIPTS=${SCRIPTS:-"baselines/td3_bc_continuous.py baselines/iql_continuous.py baselines/cql_continuous.py misa_continuous.py"}
WORKERS=${WORKERS:-2}             # processes at a time (on one GPU they share it; CUDA MPS helps them overlap)
SEEDS_PER_PROCESS=${SEEDS_PER_PROCESS:-$SEEDS}  # the seeds of a (script, dataset) pair train in one process (--num-seeds)
OUT=${OUT:-results-grid}
EXTRA_ARGS=${EXTRA_ARGS:-}        # more flags for every run, after the mode: e.g. "--steps-per-replay 8", or
                                  # "--fused-hmc" with SCRIPTS=misa_continuous.py once a GPU session has checked it
PY=${PY:-python3}
source benchmarks/use_wheels.sh  # a GPU machine without network: the packages its Python lacks (fetch_device_wheels.sh)
mkdir -p "$OUT/logs"

# 1. Datasets: the parts first, all at once (one process and one thread each), then the medium-expert unions.
start=$(date +%s)
parts=() unions=()
for env in $ENVS; do
  case $env in
    *-medium-expert) base=${env%-medium-expert}; parts+=("$base-medium" "$base-expert"); unions+=("$env") ;;
    *) parts+=("$env") ;;
  esac
done
declare -A builds=()  # pid -> dataset name
for name in $(printf '%s\n' "${parts[@]}" | sort -u); do
  OMP_NUM_THREADS=1 $PY tools/make_dataset.py "$name" --workers 1 ${DATASET_STEPS:+--num-steps $DATASET_STEPS} \
    > "$OUT/logs/build-$name.log" 2>&1 &
  builds[$!]=$name
done
failed_builds=()
for pid in "${!builds[@]}"; do
  wait "$pid" || failed_builds+=("${builds[$pid]}")
done
if [ ${#failed_builds[@]} = 0 ]; then  # the unions read both parts
  for name in ${unions[@]+"${unions[@]}"}; do
    OMP_NUM_THREADS=1 $PY tools/make_dataset.py "$name" ${DATASET_STEPS:+--num-steps $DATASET_STEPS} \
      > "$OUT/logs/build-$name.log" 2>&1 || failed_builds+=("$name")
  done
fi
if [ ${#failed_builds[@]} != 0 ]; then  # nothing trains without its data: stop before any run starts
  for name in "${failed_builds[@]}"; do
    echo "error: building $name failed: $(tail -n 1 "$OUT/logs/build-$name.log") (log: $OUT/logs/build-$name.log)" >&2
  done
  exit 1
fi
echo "datasets ready in $(( $(date +%s) - start )) s"

# 2. The grid, one benchmark.py call per script with its fastest mode on a GPU (docs/performance.md).
common="--total-timesteps $STEPS --eval-freq $EVAL_FREQ --final-eval-episodes $FINAL_EPISODES --save-model"
for script in $SCRIPTS; do
  mode=""
  if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    case $script in
      *cql_continuous.py) mode="--cuda-graphs on" ;;
      *) mode="--compile" ;;
    esac
  fi
  t0=$(date +%s)
  rc=0
  # shellcheck disable=SC2086
  $PY benchmark.py --scripts "$script" --env-ids $ENVS --num-seeds "$SEEDS" --seeds-per-process "$SEEDS_PER_PROCESS" \
    --workers "$WORKERS" --resume \
    --output-dir "$OUT" --extra-args="$common $mode $EXTRA_ARGS" || rc=$?
  echo "$script: $(( $(date +%s) - t0 )) s for $SEEDS seeds x $(wc -w <<< "$ENVS") datasets at $STEPS steps"
  if [ "$rc" = 130 ]; then  # Ctrl-C or SIGTERM: benchmark.py stopped its runs; start no other script's grid
    interrupted=1
    echo "interrupted: packing what has finished; the same command continues the grid"
    break
  fi
  [ "$rc" = 0 ] || { echo "some runs of $script failed: see $OUT/runs/logs"; runs_failed=1; }
done

# 3. What to commit (no checkpoints, no TensorBoard files) and the report.
(cd "$OUT" && find runs -mindepth 2 -maxdepth 2 \( -name evaluations.csv -o -name provenance.csv \) -print0 \
  | sort -z | tar czf results-runs.tar.gz --null -T -)
echo "wrote $OUT/results-runs.tar.gz: $(tar tzf "$OUT/results-runs.tar.gz" | wc -l) files"
# A GPU machine without the report's packages (rliable, scikit-learn) still leaves the archive to bring back.
$PY benchmarks/report.py --runs-dir "$OUT/runs" --out "$OUT/report" \
  || echo "the report failed (are requirements.txt's packages installed?); the runs are in $OUT/results-runs.tar.gz"

[ -z "${interrupted:-}" ] || exit 130  # the picture (minutes of t-SNE) waits for a finished grid

# 4. The paper's representation picture: seed 1's MISA and CQL critics side by side, on the first dataset of
#    REPRESENTATION_ENVS (default: ENVS, in order) where both have a checkpoint; $OUT/representation-ENV.png.
for env in ${REPRESENTATION_ENVS:-$ENVS}; do
  misa="$OUT/runs/${env}__misa_continuous__1/checkpoint.pt" cql="$OUT/runs/${env}__cql_continuous__1/checkpoint.pt"
  if [[ -f $misa && -f $cql ]]; then
    OMP_NUM_THREADS=${REPRESENTATION_THREADS:-4} $PY tools/plot_representation.py "$misa" "$cql" \
      --out "$OUT/representation-$env.png" || echo "the representation picture failed for $env"
    break
  fi
done
[ -z "${runs_failed:-}" ] || exit 1  # what did finish is packed and reported above
