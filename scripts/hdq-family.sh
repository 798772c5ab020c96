#!/usr/bin/env bash
# Train the committed hdq levels together on this machine's CPU (scripts/gpu-train.sh does the
# same on a GPU): the levels in WEIGHTS (hdq-q1, hdq-q2, ... sharing hdq-shared.safetensors) start
# a family (dqcodec train --arch hdq-family, fresh optimizer), which trains for MINUTES minutes
# and is exported back into WEIGHTS (the moving average of its weights over about the last 1 000
# steps), each level measured on Kodak. Running it again continues
# the run in runs/hdq-family for another MINUTES; remove that folder to start over from WEIGHTS.
#
#   scripts/hdq-family.sh [WEIGHTS [MINUTES [DATA [TRAIN-OPTIONS...]]]]
#     WEIGHTS: default models/weights (the shipped levels)
#     MINUTES: default 60
#     DATA: default ../shared/data (BSDS500 and the photos' training split)
#     TRAIN-OPTIONS: passed on to dqcodec train, e.g. --batch-size 10 (two crops per level of five);
#       the architecture and the levels' LAMBDA:K are WEIGHTS' unless given here
# Then count the levels' tables over more crops than the export's 192 (about 20 minutes):
#   dqcodec fit-tables WEIGHTS/hdq-q1 WEIGHTS/hdq-q2 ... --crops 1536
# and the family's RD curve:  dqcodec eval --codec hdq --threads 2  (--codec WEIGHTS for another folder)
# New weights for shipped levels change their fingerprints: keep the ones they replace, and list
# the new ones, as README's "Files from earlier releases" says.
set -euo pipefail
weights=${1:-models/weights}
minutes=${2:-60}
data=${3:-../shared/data}
shift $(( $# < 3 ? $# : 3 ))
run=runs/hdq-family
exported=$run/weights
dqcodec train --arch hdq-family --out "$run" --start-levels "$weights" --data "$data" \
  --lr 5e-5 --average-decay 0.999 --steps 10000000 --max-minutes "$minutes" --threads 2 \
  --export hdq --family hdq --quality 1 --weights-dir "$exported" --share-weights hdq-shared "$@"
mv "$exported"/hdq-* "$weights"/
