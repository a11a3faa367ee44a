#!/usr/bin/env bash
# Train the frame model on the default DEM dataset, export it into the package and evaluate it on the
# held-out series. One command, resumable (rerun it after a stop: finished steps are skipped and the
# training continues from its last checkpoint); about 30 min on a 2-core machine (early stopping
# decides; the paper-style model: 15 min on one thread, then a 6-minute, 12 GB export).
#   bash tools/train_model.sh [--paper] [--electrodes 1,2,...] [WORK_DIR]   (default WORK_DIR: runs/default_model)
# The shipped frame model (python/calbatch/data/frame_model.onnx; the default model is the particle step,
# tools/particle_model.py) is `bash tools/train_model.sh`: all 56 series of the default dataset v2.
# --electrodes trains on those electrodes' series only.
# --paper trains the paper-style model (Model D, scaled down: docs/model.md) on the same data and split
# instead, into runs/paper_model, for the side-by-side comparison (its ONNX file, 160 MB, is not shipped).
set -euo pipefail
cd "$(dirname "$0")/.."
PAPER=0; ELECTRODES=""
while [ $# -gt 0 ]; do
  case "$1" in
    --paper) PAPER=1; shift ;;
    --electrodes) ELECTRODES=${2:?--electrodes needs a list such as 1,2,3}; shift 2 ;;
    *) break ;;
  esac
done
WORK=${1:-runs/default_model}
PARTICLES=data/dem/default/particles
cb() { ${CALBATCH:-python3 -m calbatch} "$@"; }  # CALBATCH: another way to run it

mkdir -p "$WORK/series"
# 1. voxel series from the committed particle frames (seconds)
todo=()
for p in "$PARTICLES"/*.h5; do
  if [ -n "$ELECTRODES" ]; then  # keep msN_*.h5 for N in the list
    n=$(basename "$p" | sed -n 's/^ms\([0-9]*\)_.*/\1/p'); [[ ",$ELECTRODES," == *",$n,"* ]] || continue
  fi
  [ -f "$WORK/series/$(basename "$p")" ] || todo+=("$p")
done
[ ${#todo[@]} -eq 0 ] || cb dem revoxelize "${todo[@]}" --out "$WORK/series"

# 2. training: the paper's split (electrode 4 wholly held out, one CD of 1 and 2, two of 3), validation
#    drawn from the training series, early stopping on it
if [ $PAPER -eq 1 ]; then
  RUN=runs/paper_model; MODEL=$RUN/model.onnx; REPORT=$RUN/report
  settings=(--model paper --filters 8 --dense 32 --horizon 1 --epochs 6 --max-windows 300 --max-val-windows 60
            --patience 3 --batch-size 2 --lr 1e-3 --seed 0)
else
  RUN=$WORK/run; MODEL=python/calbatch/data/frame_model.onnx; REPORT=python/calbatch/data/frame_model_report
  settings=(--epochs 60 --max-windows 300 --max-val-windows 120 --horizon 3 --patience 8 --batch-size 2
            --lr 1e-3 --crop 32,32 --noise 0.01 --vol-weight 0.1 --seed 0)
fi
resume=(); [ -f "$RUN/state.json" ] && resume=(--resume)
cb train "$WORK"/series/*.h5 --out "$RUN" "${resume[@]}" "${settings[@]}"

# 3. export (checked against Keras) and the evaluation on the held-out series
cb export "$RUN" --out "$MODEL"
mapfile -t test < <(python3 -c "import json,sys; print('\n'.join(json.load(open(sys.argv[1]))['test']))" "$RUN/run.json")
cb evaluate "$MODEL" "${test[@]}" --out "$REPORT"
