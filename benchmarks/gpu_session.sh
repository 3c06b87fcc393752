#!/usr/bin/env bash
# Every GPU measurement in one command, for a GPU machine lent for a few minutes.
#
# On the GPU machine, from the repo root, with the slim Ray bundle at
# .devbundle/ and a 64 px ingest of the whole dataset at $DATA (the JPEGs are
# too big to carry; the 128 px tables are resampled from it, for timing):
#
#   source .devbundle/prelude.sh && OUT=/some/dir bash benchmarks/gpu_session.sh
#
# Each step has its own time limit and writes its JSON to $OUT as soon as it
# finishes, so a cut-off run still returns what it measured. Steps run in
# order of value: classifier and DCGAN throughput against plain PyTorch, then
# the quick study end to end on the GPU (every stage's GPU path). A step
# killed at its limit is followed by `ray stop --force`: this is meant for a
# machine lent to this script alone.
set -u
OUT=${OUT:-benchmarks/results/gpu}
DATA=${DATA:-runs/device/real-64}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
PY=${PY:-python3}
LOG="$OUT/session.log"
SMALL=${SMALL:-0}  # 1: tiny sizes, to try the script on a CPU machine first

step() {  # step NAME SECONDS CMD...: run one step under a limit, log its outcome, go on regardless
  local name=$1 limit=$2
  shift 2
  echo "=== $(date +%T) $name (limit ${limit}s)" | tee -a "$LOG"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "=== $(date +%T) $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    # A killed driver can leave its local Ray's workers running (on the GPU
    # too), which would skew every later step: stop them.
    "$PY" -m ray.scripts.scripts stop --force >>"$LOG" 2>&1
  fi
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"; nproc; } >>"$LOG"
# Ray first: the bundle has only been checked on a CPU twin.
step ray-check 90 "$PY" -c "from cxr_ray.runtime import init_ray; import torch; ray = init_ray(); print(ray.__version__, torch.__version__, ray.cluster_resources()); ray.shutdown()"

if [ "$SMALL" = 1 ]; then
  EPOCHS=1; STEPS=2; GAN_EPOCHS=2; BATCH=32; GAN_BATCHES=(32)
else
  # The train split is 18 steps of 256: short epochs, so several of them.
  EPOCHS=8; STEPS=100; GAN_EPOCHS=6; BATCH=256; GAN_BATCHES=(128 1024)
fi

train() {  # train MODEL RESOLUTION
  step "train-$1-$2" 150 "$PY" benchmarks/train_throughput.py --data "$DATA" --model "$1" \
    --batch-size "$BATCH" --epochs "$EPOCHS" --resolution "$2" --out "$OUT/train_${1}_${2}.json"
}

train resnet18 128
[ -n "${SKIP_GAN:-}" ] || for batch in "${GAN_BATCHES[@]}"; do
  step "gan-b$batch" 150 "$PY" benchmarks/gan_throughput.py --data "$DATA" --class-name PNEUMONIA \
    --batch-size "$batch" --workers 1 --ray-epochs "$GAN_EPOCHS" --plain-steps "$STEPS" \
    --address local --out "$OUT/gan_b${batch}.json"
done
[ "$SMALL" = 1 ] || { train mobilenet_v2 128; train resnet50 128; }

# Last, with whatever time is left: the quick study on the embedded sample,
# every stage's GPU path end to end (about 4 minutes were not enough on an H100).
step study-quick "${STUDY_LIMIT:-300}" "$PY" jobs/full_study.py --storage /tmp/cxr-study
cp /tmp/cxr-study/manifest.json "$OUT/study_manifest.json" 2>/dev/null
echo "=== done $(date +%T)" | tee -a "$LOG"
