#!/usr/bin/env bash
# On the device (one GPU): several CPU students of one recipe at once, each with its own settings, trained on a
# teacher file already on the machine, evaluated, and the one to keep brought back.
#
# Usage:
#   STAGE_TIMEOUT=420 bash benchmarks/device/train_students.sh [--recipe NAME] [--teacher FILE] \
#       NAME:KEY=VALUE[,KEY=VALUE...] NAME:...
# e.g.
#   bash benchmarks/device/train_students.sh --recipe minilm-3way-augmented \
#       p:method=layers,learning_rate=8e-5,epochs=2 q:method=layers,learning_rate=2e-4,epochs=2
#
# Needs the minilm bundle (the students' base) and the teacher file (default /tmp/threeway/teacher.parquet,
# which train_qwen_3way.sh --stages teacher writes, or a carried copy). Each student runs
# train_qwen_3way.sh --stages student,eval_student in /tmp/students/NAME. Under $OUT: students.json (each
# student's settings, training record and evaluation), students.log, and the model folder of the student with
# the highest SST-2 dev accuracy among those that call at most MAX_HAM_NEGATIVE (default 0.10) of SMS ham
# negative, as minilm-3way.tar (in parts of 16 MB where larger).
set -uo pipefail
RECIPE=minilm-3way-augmented
TEACHER=/tmp/threeway/teacher.parquet
while [ $# -gt 0 ]; do
  case "$1" in
    --recipe) RECIPE=$2; shift 2 ;;
    --teacher) TEACHER=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "name at least one student: NAME:KEY=VALUE[,KEY=VALUE...]" >&2; exit 2; }
[ -e "$TEACHER" ] || { echo "no teacher file at $TEACHER" >&2; exit 3; }
OUT=${OUT:?set OUT to the folder that comes back}
ROOT=/tmp/students
bash benchmarks/device/setup_env.sh > /dev/null || exit
source benchmarks/device/env.sh

pids=()
for spec in "$@"; do
  name=${spec%%:*}
  sets=()
  IFS=, read -r -a pairs <<< "${spec#*:}"
  for pair in "${pairs[@]}"; do sets+=(--student-set "$pair"); done
  rm -rf "${ROOT:?}/$name" && mkdir -p "$ROOT/$name/work" "$ROOT/$name/out"
  ln -sfn "$TEACHER" "$ROOT/$name/work/teacher.parquet"
  WORK=$ROOT/$name/work OUT=$ROOT/$name/out bash benchmarks/device/train_qwen_3way.sh \
      --stages student,eval_student --student-recipe "$RECIPE" "${sets[@]}" > "$ROOT/$name/run.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"

python3 - "$ROOT" "$OUT" "${MAX_HAM_NEGATIVE:-0.10}" "$@" <<'PY'
import json
import shutil
import sys
from pathlib import Path

root, out, max_ham, specs = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
students = {}
for spec in specs:
    name, settings = spec.split(":", 1)
    results_file = root / name / "out" / "threeway_results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {"stages": {}, "seconds": {}}
    students[name] = {"settings": settings.split(","), **results}
    with open(out / "students.log", "a") as log:
        log.write(f"== {name} ({settings})\n{(root / name / 'run.log').read_text()[-6000:]}\n")


def figures(record):
    """(SST-2 dev accuracy, share of SMS ham called negative, development messages' macro-F1) of a student."""
    stage = record["stages"].get("eval_student")
    by_kind = {r.get("kind"): r for r in stage} if isinstance(stage, list) else {}
    return (by_kind.get("binary", {}).get("accuracy"), by_kind.get("unlabelled", {}).get("called_negative"),
            by_kind.get("three-way", {}).get("macro_f1"))


scored = {name: figures(r) for name, r in students.items()}
fit = [(sst2, name) for name, (sst2, ham, _) in scored.items() if sst2 is not None and ham is not None and ham <= max_ham]
chosen = max(fit)[1] if fit else None
(out / "students.json").write_text(json.dumps({"chosen": chosen, "max_ham_negative": max_ham,
                                               "students": students}, indent=1) + "\n")
if chosen:
    for part in sorted((root / chosen / "out").glob("minilm-3way.tar*")):
        shutil.copy(part, out / part.name)
print(json.dumps(scored), "chosen:", chosen)
PY
ls -l "$OUT"
