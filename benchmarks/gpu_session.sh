#!/usr/bin/env bash
# Every GPU measurement in one command, for a GPU machine lent for a few minutes.
#
# On the GPU machine, from the repo root, with the slim Ray bundle at
# .devbundle/ and either a 64 px ingest of the whole dataset at $DATA or the
# Kaggle-layout JPEG folder at $SRC (ingested into $DATA first; the 128 px
# tables are resampled from the 64 px one, for timing):
#
#   source .devbundle/prelude.sh && OUT=/some/dir SRC=/path/chest_xray bash benchmarks/gpu_session.sh
#
# The JPEGs (38 MB) and the Ray bundle (29 MB) do not fit one 64 MiB device
# transfer together: docs/performance.md (GPU, H200) says how they travel in two.
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
SRC=${SRC:-}            # Kaggle-layout JPEGs: ingested into $DATA when it is missing; the study's --data
MODELS=${MODELS:-resnet18 mobilenet_v2 resnet50}
STUDY_PROFILE=${STUDY_PROFILE:-quick}  # full needs SRC (the whole dataset)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
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
  step "train-$1-$2" "${TRAIN_LIMIT:-150}" "$PY" benchmarks/train_throughput.py --data "$DATA" ${SRC:+--src "$SRC"} --model "$1" \
    --batch-size "$BATCH" --epochs "$EPOCHS" --resolution "$2" --out "$OUT/train_${1}_${2}.json"
}

for model in $MODELS; do train "$model" 128; done
[ -n "${SKIP_GAN:-}" ] || for batch in "${GAN_BATCHES[@]}"; do
  step "gan-b$batch" 150 "$PY" benchmarks/gan_throughput.py --data "$DATA" --class-name PNEUMONIA \
    --batch-size "$batch" --workers 1 --ray-epochs "$GAN_EPOCHS" --plain-steps "$STEPS" \
    --address local --out "$OUT/gan_b${batch}.json"
done

# Last, with whatever time is left: a study end to end on the GPU, the quick
# profile on the embedded sample or the full profile (all four architectures)
# on $SRC. Its manifest records each finished stage's duration; a study cut off
# at its limit still returns the stages it finished.
if [ "$STUDY_PROFILE" = full ]; then
  STUDY=(jobs/full_study.py --profile full --data "$SRC" --storage /tmp/cxr-study)
else
  STUDY=(jobs/full_study.py --storage /tmp/cxr-study)
fi
# DEADLINE (epoch seconds) gives the study whatever the earlier steps left, less 20 s to copy results back.
[ -n "${DEADLINE:-}" ] && STUDY_LIMIT=$((DEADLINE - $(date +%s) - 20))
step "study-$STUDY_PROFILE" "${STUDY_LIMIT:-300}" "$PY" "${STUDY[@]}" ${STUDY_ARGS:-}
cp /tmp/cxr-study/manifest.json "$OUT/study_manifest.json" 2>/dev/null
# The study's console (in session.log) is a line per stage; everything else it and Ray printed is in its log file.
cp /tmp/cxr-study/logs/study-*.log "$OUT/" 2>/dev/null
echo "=== done $(date +%T)" | tee -a "$LOG"
