#!/usr/bin/env bash
# The shipped particle step, reproducibly, in one command: stage 2 from the committed stage 1
# (data/particle_model/stage1: 14 epochs with the model's own states one step on, soft contacts, a
# loss on every pair's relative move and a moving average of the weights, the best epoch chosen by
# free rollouts of the validation series), then the export and its scores on the validation series.
# Resumable: rerun it after a stop and the training goes on from its last epoch.
#   bash tools/particle_model.sh [--from-scratch] [WORK_DIR]   (default WORK_DIR: runs/particle_model)
# The result is WORK_DIR/particle_step.onnx and WORK_DIR/validation.json. --from-scratch trains
# stage 1 first (40 epochs on the DEM's transitions, inputs noised by 0.03 um) into WORK_DIR/stage1
# with today's features; the committed stage 1 read one feature fewer, and from scratch the same
# recipe ends further from the DEM (docs/model.md, "Training").
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE1=data/particle_model/stage1
if [ "${1:-}" = "--from-scratch" ]; then SCRATCH=1; shift; else SCRATCH=0; fi
WORK=${1:-runs/particle_model}
if [ $SCRATCH -eq 1 ]; then
  STAGE1=$WORK/stage1
  python3 tools/particle_model.py --out "$STAGE1" --epochs 40 --noise-um 0.03 --lr 0.001
fi
python3 tools/particle_model.py --out "$WORK" --init "$STAGE1/best.weights.h5" --epochs 14 --pushforward 1 \
    --noise-um 0.1 --lr 0.0003 --pair-weight 1.0 --ema 0.995 --contacts soft --train-contacts fixed
