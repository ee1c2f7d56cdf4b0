#!/usr/bin/env bash
# The GPU rows of docs/performance.md in one run, sized for a short loan of a GPU machine.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR [STEP ...]]   # default: benchmarks/gpu-results, every step
#   bash benchmarks/gpu_check.sh out throughput          # step 1 alone (at most 8 minutes)
#   bash benchmarks/gpu_check.sh out teacher data        # steps 2 and 3 (at most 3 minutes)
#
# From the repository root, on a machine with CUDA, torch and torchvision. Runs, each under its
# own time limit so one slow step cannot use up the rest, and goes on after a failure:
#
#   1. benchmarks/throughput.py  TITN against timm's TNT: bf16 autocast, torch.compile, batch 1024,
#                                MFU (the project's GPU target: >= 1.5x TNT's training throughput);
#   2. benchmarks/teacher_path.py  the teacher's forward pass, batch 1024, and a training step;
#   3. benchmarks/data_path.py   DataLoader against DeviceLoader, CIFAR-10, batch 1024.
#
# Each writes a log (and throughput.py a JSON file) into OUT_DIR; machine.log names the machine.
# Exit status 1 if any step failed (they are named at the end), 2 for an unknown step name.
#
# Offline machines. The package itself runs from the checkout (PYTHONPATH); what torch does not
# bring is installed from wheels in .whl/ when they are there, made beforehand on a machine online:
#
#   pip download --no-deps --dest .whl timm einops tqdm
#
# (timm imports without its optional hub packages.) Step 3 needs CIFAR-10's training split under
# TITN_EDU_DATA. Without it, any  .parts/cifar10_train.part*.npz  file (an npz holding `images`,
# `labels` and `classes` for part of the split) is used as the split: enough images for a timed
# pass. Otherwise step 3 is skipped, and says so. (scripts/gpu_run.sh's parts are another format: after its
# data step, TITN_EDU_DATA=runs/gpu/data holds the whole split.)
#
# GPU_CHECK_WHEELS and GPU_CHECK_PARTS name other folders than .whl/ and .parts/.
# GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 runs every step on the CPU with tiny sizes: a check that
# the script and the three benchmarks work together (tests/test_gpu_check.py), no figures.
set -u

OUT=${1:-benchmarks/gpu-results}
shift $(( $# > 0 ? 1 : 0 ))
STEPS=" ${*:-throughput teacher data} "
for s in $STEPS; do
    case $s in throughput|teacher|data) ;; *) echo "unknown step '$s': choose from throughput, teacher, data" >&2; exit 2 ;; esac
done
DEVICE=${GPU_CHECK_DEVICE:-cuda}
QUICK=${GPU_CHECK_QUICK:-0}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SCRATCH=$(mktemp -d)  # installed wheels and the data link: kept out of OUT_DIR, removed at the end
trap 'rm -rf "$SCRATCH"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}

WHEELS=${GPU_CHECK_WHEELS:-.whl}
PARTS=${GPU_CHECK_PARTS:-.parts}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    DEPS="$SCRATCH/deps"
    "$PY" -m pip install --quiet --no-index --no-deps --target "$DEPS" "$WHEELS"/*.whl
    export PYTHONPATH="$PYTHONPATH:$DEPS"  # after the checkout, before site-packages (pure-Python wheels)
fi

if [ -z "${TITN_EDU_DATA:-}" ]; then
    part=$(compgen -G "$PARTS/cifar10_train.part*.npz" | head -n 1)
    if [ -n "$part" ]; then
        mkdir -p "$SCRATCH/data/cifar10-npz"
        ln -s "$(cd "$(dirname "$part")" && pwd)/$(basename "$part")" "$SCRATCH/data/cifar10-npz/cifar10_train.npz"
        export TITN_EDU_DATA="$SCRATCH/data"
    fi
fi

if [ "$QUICK" = 1 ]; then
    THROUGHPUT=(--batch-size 4 --rounds 1 --steps 1 --warmup 0 --no-memory --no-compile --no-amp)
    TEACHER=(--teachers cnn-small --batch 4 --rounds 1)
    DATA=(--datasets cifar10 --batch 8 --images 16)
    LIMIT=(300 120 120)
else
    THROUGHPUT=(--rounds 5)
    TEACHER=(--batch 1024 --rounds 5)
    DATA=(--datasets cifar10 --batch 1024 --images 8192 --workers 8)
    LIMIT=(480 60 60)  # torch.compile: two models, training and inference, compiled in step 1
fi

FAILED=()
step() {  # step NAME LIMIT_S COMMAND...: run it under the limit, log to OUT/NAME.log, report its status
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    [ "$rc" = 0 ] || FAILED+=("$name")
    echo "== $name: exit $rc after $((SECONDS - start)) s (limit $limit s); log $OUT/$name.log"
    tail -n 25 "$OUT/$name.log"
}

{
    date -u +"%Y-%m-%d %H:%M UTC"
    "$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '|',
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true
} | tee "$OUT/machine.log"

if [[ $STEPS == *" throughput "* ]]; then
    step throughput "${LIMIT[0]}" "$PY" benchmarks/throughput.py --device "$DEVICE" "${THROUGHPUT[@]}" \
        --json "$OUT/throughput.json"
fi
if [[ $STEPS == *" teacher "* ]]; then
    step teacher_path "${LIMIT[1]}" "$PY" benchmarks/teacher_path.py --device "$DEVICE" "${TEACHER[@]}"
    step teacher_train "${LIMIT[1]}" "$PY" benchmarks/teacher_path.py --device "$DEVICE" "${TEACHER[@]}" --train
fi
if [[ $STEPS == *" data "* ]]; then
    if [ -n "${TITN_EDU_DATA:-}" ]; then
        step data_path "${LIMIT[2]}" "$PY" benchmarks/data_path.py --device "$DEVICE" "${DATA[@]}"
    else
        echo "== data_path: skipped: set TITN_EDU_DATA to a folder with cifar10-npz/, or put a part in $PARTS/"
    fi
fi
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "== failed: ${FAILED[*]}"
    exit 1
fi
