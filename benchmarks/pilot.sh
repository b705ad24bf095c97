#!/usr/bin/env bash
# One pilot of the recipe study: both stages at a fixed step budget, measured on val.
#
#   benchmarks/pilot.sh NAME TOK_STEPS TR_STEPS [--tok KEY=VALUE ...] [--tr KEY=VALUE ...] [--tokenizer RUN]
#
# Trains a tokenizer (configs/cats64.yaml + --tok overrides) for TOK_STEPS steps, or reuses the
# tokenizer of RUN; records its oracle row on val; trains a transformer (+ --tr overrides) for
# TR_STEPS steps; records the MaskGIT fill on val (decode defaults of the config, harmonic
# prefill). Run folders go to $RUNS/pilots/NAME, rows to $RUNS/study.jsonl (benchmarks/study.py).
# Environment (required): RUNS (a folder for runs, outside the repository), DATA (a cats64 folder:
# train/, val/), VAL and STATS (study.py's --val and --stats); optional: MASKGIT, PY (commands).
set -euo pipefail
name=$1 tok_steps=$2 tr_steps=$3
shift 3
tok=() tr=() reuse=""
while [ $# -gt 0 ]; do
  case $1 in
    --tok) tok+=(--set "$2"); shift 2 ;;
    --tr) tr+=(--set "$2"); shift 2 ;;
    --tokenizer) reuse=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
: "${RUNS:?set RUNS to a folder for the runs}" "${DATA:?set DATA to a cats64 folder}"
: "${VAL:?set VAL to the val inpainting set}" "${STATS:?set STATS to its FID statistics}"
MASKGIT=${MASKGIT:-maskgit}
PY=${PY:-python}
run=$RUNS/pilots/$name
mkdir -p "$run"
study() { $PY "$here/study.py" --val "$VAL" --stats "$STATS" --log "$RUNS/study.jsonl" --model "$run" "$@" > /dev/null; }

if [ -n "$reuse" ]; then
  cp "$reuse/tokenizer.pt" "$run/tokenizer.pt"
else
  $MASKGIT train cats64 --stage tokenizer --data "$DATA/train" --val "$DATA/val" --out "$run" --seed 0 \
    --max-steps "$tok_steps" --set tokenizer_train.warmup_steps=100 "${tok[@]}" --overwrite --json \
    > "$run/tokenizer.json" 2> "$run/tokenizer.log"
  study --name "$name: oracle" --set fill=oracle
fi
$MASKGIT train cats64 --stage transformer --data "$DATA/train" --val "$DATA/val" --out "$run" --seed 0 \
  --max-steps "$tr_steps" "${tok[@]}" "${tr[@]}" --overwrite --json > "$run/transformer.json" 2> "$run/transformer.log"
study --name "$name: maskgit" --set prefill=harmonic
