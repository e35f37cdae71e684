#!/usr/bin/env bash
# The prepared GPU session of issue 14: the device tool runs it in the repository root, with the
# wheels that bench/device/wheels.sh put in .whl/ (Prefect, MLflow, Optuna and what they need that
# the GPU image lacks):
#
#   run(command="bash bench/device/session.sh check study2m", carry=[".whl"], timeout_s=540)
#   run(command="bash bench/device/session.sh throughput mfu", carry=[".whl"], timeout_s=420)
#
# Phases, in the issue's order; each runs under its own cap (seconds; CAP_<phase>=N overrides), so
# one slow phase cannot eat the call, and a phase cut off keeps what it wrote:
#   check       pytest -m gpu (CUDA tests, the real-OOM study test among them), then a smoke study
#               with --device cuda                                                    (items 1, 5)
#   study2m     `hpo run 2M h1 --trials 50` with SLOTS trial processes on the one GPU, stopped
#               cleanly before the cap; GPU utilisation sampled by nvidia-smi; then the per-trial
#               time split (bench/trial_split.py)                                     (item 2)
#   throughput  the trainer against the plain reference at 20M, deepest and widest, with and
#               without compile; the deepest 20M trained 3 epochs at the largest learning rate (item 3)
#   mfu         MFU at the batch `auto` finds, 200M and 2B, deepest and widest, with and without
#               torch.compile                                                          (item 4)
# Item 6 (the campaign's projected wall time) is worked out afterwards from these figures.
#
# What comes back in $OUT (the tool returns at most 8 files): summary.txt (each phase's exit status
# and seconds, the device line), figures.jsonl (every JSON figure), and one log per phase.
#
#   bash bench/device/session.sh --rehearse check study2m throughput mfu
# runs the same commands on this machine's CPU at toy sizes: it proves the plumbing (imports, the
# carried packages, the flags, the files written), it measures nothing that belongs in RESULTS.md.
set -uo pipefail

PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/device-out}
ROOT=${HPO_SESSION_ROOT:-/tmp/hpo-session}  # one set of SQLite stores for every phase's studies
SLOTS=${SLOTS:-8}
REHEARSE=0
PHASES=()
for arg in "$@"; do
  case "$arg" in
    --rehearse) REHEARSE=1 ;;
    check | study2m | throughput | mfu) PHASES+=("$arg") ;;
    *) echo "unknown phase '$arg': give any of check study2m throughput mfu (and --rehearse on a CPU)" >&2; exit 2 ;;
  esac
done
[ ${#PHASES[@]} -gt 0 ] || { echo "name the phases to run: check study2m throughput mfu" >&2; exit 2; }
mkdir -p "$OUT" "$ROOT"
SUMMARY="$OUT/summary.txt"
FIGURES="$OUT/figures.jsonl"
FIGDIR=$(mktemp -d)

if compgen -G ".whl/*.whl" >/dev/null; then
  started=$(date +%s)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
  echo "wheels installed in $(($(date +%s) - started)) s" >>"$SUMMARY"
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
hpo() { "$PY" -m flows.cli "$@"; }

if [ "$REHEARSE" = 1 ]; then
  DEVICE=cpu; BUDGET_2M=smoke; TRIALS=3; STUDY_EPOCHS="--max-epochs 1"; SLOTS=2
  B20=smoke; B200=smoke; B2B=2M; STEPS_REF=3; STEPS_MFU=2; DEEP_EPOCHS=1  # distinct names: one record each
  caps=(check 300 study2m 300 throughput 300 mfu 300)
else
  DEVICE=cuda; BUDGET_2M=2M; TRIALS=50; STUDY_EPOCHS=""
  B20=20M; B200=200M; B2B=2B; STEPS_REF=50; STEPS_MFU=10; DEEP_EPOCHS=3
  caps=(check 150 study2m 330 throughput 120 mfu 270)
fi
declare -A CAP=([${caps[0]}]=${caps[1]} [${caps[2]}]=${caps[3]} [${caps[4]}]=${caps[5]} [${caps[6]}]=${caps[7]})
for phase in "${!CAP[@]}"; do  # CAP_study2m=400 overrides a cap
  override="CAP_$phase"; [ -n "${!override:-}" ] && CAP[$phase]=${!override}
done
STUDY_CAP=${CAP[study2m]}
# each phase runs in a child bash (under `timeout`), which sees these
export PY DEVICE ROOT SLOTS FIGDIR BUDGET_2M TRIALS STUDY_EPOCHS STUDY_CAP B20 B200 B2B STEPS_REF STEPS_MFU DEEP_EPOCHS

{
  echo "session $(date -u +%FT%TZ) phases: ${PHASES[*]} rehearse=$REHEARSE device=$DEVICE slots=$SLOTS commit=$(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
} >>"$SUMMARY" 2>&1

throughput() {  # bench/train_throughput.py with its figures kept: throughput NAME ARGS...
  local name=$1; shift
  "$PY" bench/train_throughput.py --device "$DEVICE" --json "$FIGDIR/$name.json" "$@"
}

phase_check() {
  "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_train.py tests/test_batch_size.py tests/test_packed.py tests/test_study.py
  local tests=$?
  hpo run 2M h1 --smoke --device "$DEVICE" --root "$ROOT"
  local smoke=$?
  return $((tests || smoke))
}

phase_study2m() {
  local stop_h sampler=""
  stop_h=$("$PY" -c "print(max($STUDY_CAP - 45, 30) / 3600)")  # stop cleanly, leave time for the split
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi dmon -s um -d 5 >"$FIGDIR/dmon.txt" 2>&1 &
    sampler=$!
  fi
  local started=$(date +%s)
  hpo run "$BUDGET_2M" h1 --trials "$TRIALS" --slots "$SLOTS" --device "$DEVICE" --timeout-hours "$stop_h" \
    $STUDY_EPOCHS --root "$ROOT"
  local rc=$?
  echo "study wall time, command start to end: $(($(date +%s) - started)) s"
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null && { echo "nvidia-smi dmon (every 5 s):"; cat "$FIGDIR/dmon.txt"; }
  "$PY" bench/trial_split.py "${BUDGET_2M}_h1" --root "$ROOT" --json "$FIGDIR/split-${BUDGET_2M}_h1.json"
  return $((rc || $?))
}

phase_throughput() {
  local rc=0 deepest lr
  for which in deepest widest; do
    throughput "$B20-$which" --budget "$B20" --arch-idx "$which" --steps "$STEPS_REF" || rc=1
    throughput "$B20-$which-compile" --budget "$B20" --arch-idx "$which" --steps "$STEPS_REF" --compile || rc=1
  done
  # The deepest 20M at the search space's largest learning rate: does it train without diverging?
  read -r deepest lr < <("$PY" -c "
from bench._common import pick_architectures
from models.arch_grid import get_architectures_for_budget
from schemas.config import SearchSpace
print(pick_architectures(get_architectures_for_budget('$B20'), 'deepest')[0].arch_idx, max(SearchSpace().learning_rates))")
  hpo train "$B20" h1 --arch-idx "$deepest" --learning-rate "$lr" --max-epochs "$DEEP_EPOCHS" --device "$DEVICE" --root "$ROOT" || rc=1
  return $rc
}

phase_mfu() {
  local rc=0
  for budget in "$B200" "$B2B"; do
    for which in deepest widest; do
      throughput "$budget-$which-auto" --budget "$budget" --arch-idx "$which" --batch-size auto --steps "$STEPS_MFU" --skip-reference || rc=1
      throughput "$budget-$which-auto-compile" --budget "$budget" --arch-idx "$which" --batch-size auto --steps "$STEPS_MFU" --skip-reference --compile || rc=1
    done
  done
  return $rc
}

for phase in "${PHASES[@]}"; do
  started=$(date +%s)
  # `timeout` needs a command, not a shell function: the phase runs in a child bash that has them
  timeout --kill-after=10 "${CAP[$phase]}" bash -c "$(declare -f hpo throughput phase_$phase); phase_$phase" \
    >"$OUT/$phase.log" 2>&1
  rc=$?
  note=""; [ $rc = 124 ] && note=" (cut off at its cap of ${CAP[$phase]} s)"
  echo "phase $phase: exit $rc, $(($(date +%s) - started)) s$note" >>"$SUMMARY"
done

for figure in "$FIGDIR"/*.json; do
  [ -e "$figure" ] || continue
  "$PY" -c "import json, sys; print(json.dumps({'name': sys.argv[1], **json.load(open(sys.argv[2]))}))" \
    "$(basename "$figure" .json)" "$figure" >>"$FIGURES"
done
cat "$SUMMARY"
