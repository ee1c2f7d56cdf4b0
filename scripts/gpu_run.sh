#!/usr/bin/env bash
# The project's GPU work in three prepared commands: the CUDA smoke test, the timed CIFAR-10 run of
# the paper's TITN, the throughput rows against timm's TNT, and (with time left) the course model's run.
#
#   bash scripts/gpu_run.sh [--out DIR] [--work DIR] [--budget S] [--deadline S] [--device cuda|cpu] [--quick]
#                           [--no-compile] [STEP ...] [-- TITN-EDU-TRAIN-FLAGS ...]
#
# From the repository root, on a machine with torch and torchvision. Steps run in the order below, whatever
# order they are named in (default: all), each under its own time limit, and the script goes on after a
# step fails:
#
#   smoke       scripts/gpu_smoke.py: every GPU path (bf16, torch.compile, DeviceLoader, the teacher, fit,
#               checkpoints) and the measured step times that size the timed run (WORK/sizing.json)
#   throughput  benchmarks/throughput.py --modes train: TITN against timm's TNT of the same configuration,
#               bf16 + compile, batch 1024, images/s and MFU (the target: TITN >= 1.5x TNT)
#   data        scripts/data_parts.py join: CIFAR-10 from the parts in .parts/ into WORK/data (run
#               before tta and course whenever TITN_EDU_DATA is not set)
#   tta         scripts/reproduce_cifar10.py --preset gpu-cifar10: ResNet-9 teacher, then the Table 1 TITN
#               distilled from it, the test set scored every epoch, timed to the paper's 92.03 %; run records
#               into OUT/results when complete (a second command resumes a paused run)
#   course      titn-edu train --preset titn-cifar10 --compile, stopped at the --deadline (resumed next time)
#
# --budget S: seconds of the tta step's run (default 400; its epochs are sized to fit them); --deadline S:
# seconds from the start of this command by which the course step, the last, stops; it starts only with
# at least 2 minutes left (default 490).
# --no-compile: without torch.compile (smoke, tta, course), should it fail. Flags after -- go to the tta
# step's titn-edu train (e.g. -- --augment crop-flip), after the preset's and the sizing's.
#
# Budget on one H200 (commands of at most 10 minutes, 15 minutes of device time in all, start included;
# the arithmetic behind the epochs is in docs/gpu.md):
#
#   | command | travels with                   | steps            | limits (s)              | expected   |
#   |---------|--------------------------------|------------------|-------------------------|------------|
#   | 1       | .parts/cifar10.part00of03.npz  | smoke throughput | 180, 240                | ~3.7 min   |
#   | 2       | .parts/cifar10.part01of03.npz  | data             | 90                      | ~10 s      |
#   | 3       | .parts/cifar10.part02of03.npz  | data tta course  | 90, --budget + 60, rest | ~8.2 min   |
#
#   machine start ~1.5 min + 3.7 + 0.25 (pause) + 0.2 + 0.25 (pause) + 8.2 = 14 min. Command 2 only
#   brings the second part (its data step names the third as missing). Command 3: data ~15 s, tta
#   ~6.2 min (--budget 400), then course until --deadline 490 s, which makes it end on time whatever the
#   others took. These defaults fit 550 s of device time left when command 3 starts; otherwise
#   --budget = (seconds left) - 150 (at most 400), --deadline = (seconds left) - 60.
#
# OUT (default benchmarks/gpu-results; the folder whose files come back) gets at most 8 files, at most one
# folder down: summary.json (each step's exit status, seconds and limit; the machine), gpu_run.log (every
# step's whole output), smoke.json, throughput.json, tta_metrics.json (the timed run's metrics.json, also
# when paused), results/<preset>-<model>-{teacher,student}.json, course_metrics.json.
# WORK (default runs/gpu; kept between commands on the same machine): sizing.json, data/, c10/, course/.
#
# Packages: the project runs from the checkout (PYTHONPATH); timm (throughput only) is installed from the
# wheels in .whl/ when it cannot be imported. --device cpu --quick runs every step with tiny sizes on the
# CPU (tests/test_gpu_run.py): a check that the pieces work together, no figures.
# Exit status: 0 if every step passed; 1 if any failed (named on the last line); 2 for bad arguments.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2  # the repository root: relative paths below start there

OUT=benchmarks/gpu-results WORK=runs/gpu BUDGET=400 DEADLINE=490 DEVICE=cuda QUICK=0 COMPILE=1 STEPS=() EXTRA=()
while [ $# -gt 0 ]; do
    case $1 in
        --) shift; EXTRA=("$@"); break ;;
        --no-compile) COMPILE=0; shift ;;
        --out) OUT=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --budget) BUDGET=$2; shift 2 ;;
        --deadline) DEADLINE=$2; shift 2 ;;
        --device) DEVICE=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        smoke|throughput|data|tta|course) STEPS+=("$1"); shift ;;
        *) echo "unknown argument '$1': steps are smoke, throughput, data, tta, course" >&2; exit 2 ;;
    esac
done
case $DEVICE in cuda|cpu) ;; *) echo "--device must be cuda or cpu; got '$DEVICE'" >&2; exit 2 ;; esac
for n in "$BUDGET" "$DEADLINE"; do
    [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || { echo "--budget and --deadline take whole seconds > 0; got '$n'" >&2; exit 2; }
done
[ ${#STEPS[@]} -gt 0 ] || STEPS=(smoke throughput data tta course)
wants() { [[ " ${STEPS[*]} " == *" $1 "* ]]; }
if [ -z "${TITN_EDU_DATA:-}" ] && ! wants data && { wants tta || wants course; }; then STEPS+=(data); fi

mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd) WORK=$(cd "$WORK" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LOG=$OUT/gpu_run.log STEPLOG=$WORK/steps.jsonl
: > "$STEPLOG"
FAILED=()
if [ "$QUICK" = 1 ]; then  # tiny sizes: the whole script in about a minute on a CPU
    SMOKE=(--quick --budget 60)
    BENCH=(--batch-size 4 --rounds 1 --steps 1 --warmup 0 --no-memory --no-compile --no-amp --no-accelerate)
    TINY=(--model titn-tiny --model-arg depth=1 --teacher-arg width=4 --epochs 2
          --teacher-epochs 1 --batch-size 16 --policy-group 4 --save-every 1 --threads 1 --no-accelerate)
    COURSE=(--model-arg depth=1 --teacher-arg width=4 --epochs 1 --teacher-epochs 1 --batch-size 16
            --limit 64 --test-limit 32 --threads 1 --no-accelerate)
    LIMITS=(120 120 60 180 120) MIN_COURSE=10 TTA_BUDGET=150
else  # (the tta step sizes its epochs again for its own --budget from the step times in WORK/sizing.json)
    SMOKE=(--budget "$BUDGET") BENCH=(--rounds 5) TINY=(--compile) COURSE=(--compile)
    LIMITS=(180 240 90 $((BUDGET + 60)) 0) MIN_COURSE=120 TTA_BUDGET=$BUDGET
    if [ "$COMPILE" = 0 ]; then  # eager PyTorch (the benchmark keeps compiling: it compares compiled models)
        SMOKE+=(--no-compile) TINY=() COURSE=()
    fi
fi

summary() {  # summary.json from the steps so far and the machine (rewritten after each step)
    "$PY" - "$STEPLOG" "$OUT/summary.json" "$DEVICE" "$QUICK" "$MACHINE" "${STEPS[*]}" <<'EOF'
import json, sys, time
steps = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
summary = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": sys.argv[3],
           "quick": sys.argv[4] == "1", "machine": sys.argv[5].splitlines(), "asked": sys.argv[6].split(),
           "steps": steps, "failed": [s["name"] for s in steps if s["rc"] not in (0, 75)]}
with open(sys.argv[2], "w") as f:
    json.dump(summary, f, indent=2)
EOF
}

step() {  # step NAME LIMIT_S COMMAND...: run it under its limit, log it, report its status
    local name=$1 limit=$2 start=$SECONDS rc ok=0  # ok: also 75 for a run paused by its time limit
    shift 2
    [ "$name" = course ] && ok=75
    echo "== $name: $* (limit $limit s)" >> "$LOG"
    timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.out" 2>&1
    rc=$?
    cat "$WORK/$name.out" >> "$LOG"
    [ "$rc" = 0 ] || [ "$rc" = "$ok" ] || FAILED+=("$name")
    printf '{"name": "%s", "rc": %d, "seconds": %d, "limit": %d}\n' "$name" "$rc" $((SECONDS - start)) "$limit" >> "$STEPLOG"
    summary
    echo "== $name: exit $rc after $((SECONDS - start)) s (limit $limit s)"
    tail -n 15 "$WORK/$name.out"
}

MACHINE=$(
    date -u +"%Y-%m-%d %H:%M UTC"
    "$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '|',
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" 2>&1
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true
)
echo "$MACHINE" | tee "$LOG"
summary

if wants smoke; then
    step smoke "${LIMITS[0]}" "$PY" scripts/gpu_smoke.py --device "$DEVICE" "${SMOKE[@]}" --json "$OUT/smoke.json" \
        --sizing "$WORK/sizing.json"
fi
if wants throughput; then
    if ! "$PY" -c "import timm" 2> /dev/null && compgen -G ".whl/*.whl" > /dev/null; then  # offline: the wheels
        "$PY" -m pip install --quiet --no-index --no-deps --target "$WORK/wheels" .whl/*.whl >> "$LOG" 2>&1
        export PYTHONPATH="$PYTHONPATH:$WORK/wheels"
    fi
    step throughput "${LIMITS[1]}" "$PY" benchmarks/throughput.py --device "$DEVICE" --modes train --num-classes 10 \
        "${BENCH[@]}" --json "$OUT/throughput.json"
fi
if wants data; then
    step data "${LIMITS[2]}" "$PY" scripts/data_parts.py join "${GPU_RUN_PARTS:-.parts}" "$WORK/data"
    [ -n "${TITN_EDU_DATA:-}" ] || export TITN_EDU_DATA="$WORK/data"
fi
if wants tta; then
    step tta "${LIMITS[3]}" "$PY" scripts/reproduce_cifar10.py --preset gpu-cifar10 --output "$WORK/c10" \
        --budget "$TTA_BUDGET" --sizing "$WORK/sizing.json" --record --results "$OUT/results" -- \
        --device "$DEVICE" --no-progress ${TINY[@]+"${TINY[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
    [ -f "$WORK/c10/metrics.json" ] && cp "$WORK/c10/metrics.json" "$OUT/tta_metrics.json"
fi
if wants course; then
    left=$((DEADLINE - SECONDS - 15))
    if [ -f "$WORK/course/metrics.json" ] && grep -q '"status": "completed"' "$WORK/course/metrics.json"; then
        echo "== course: already complete in $WORK/course"
    elif [ "$left" -lt "$MIN_COURSE" ]; then
        echo "== course: skipped, $left s left before the --deadline (needs $MIN_COURSE)"
    else
        resume=()
        [ -f "$WORK/course/metrics.json" ] && resume=(--resume "$WORK/course")
        minutes=$(awk -v s="$left" 'BEGIN {t = s - 20; if (t < s / 2) t = s / 2; printf "%.3f", t / 60}')
        step course "$left" "$PY" -m titn_edu train --preset titn-cifar10 --output "$WORK/course" \
            ${resume[@]+"${resume[@]}"} --device "$DEVICE" --no-progress --time-limit "$minutes" ${COURSE[@]+"${COURSE[@]}"}
        [ -f "$WORK/course/metrics.json" ] && cp "$WORK/course/metrics.json" "$OUT/course_metrics.json"
    fi
fi
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "== failed: ${FAILED[*]}"
    exit 1
fi
echo "== all steps passed"
