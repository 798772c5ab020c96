#!/usr/bin/env bash
# The hdq levels that share one trained network: q1, q3 and q4 take the transforms of a trained
# hdq-q2 and fit their own fine codebooks (ECVQ at their lambda, K codes) and context tables;
# the transforms are stored once, in WEIGHTS/hdq-shared.safetensors. About 5 minutes per level
# on 2 CPU threads, then each level is measured on Kodak.
#
#   scripts/hdq-levels.sh [WEIGHTS [DATA]]
#     WEIGHTS: default checkpoints; WEIGHTS/hdq-q2 must exist, exported with --share-weights hdq-shared
#     DATA: default ../shared/data; the training images hdq-q2's tables were counted on (the
#           levels share its coarse tables, so they must count theirs on the same images)
# Then the family's RD curve:  dqcodec eval --codec WEIGHTS --threads 2
set -euo pipefail
weights=${1:-checkpoints}
data=${2:-../shared/data}
for level in "1 0.03 128" "3 0.005 256" "4 0.002 256"; do
  read -r quality lambda codes <<< "$level"
  run=runs/hdq-levels-q$quality
  rm -rf "$run"  # a refit starts from hdq-q2 as it is now
  dqcodec train --arch hdq --init-from "$weights/hdq-q2" --out "$run" --lambda "$lambda" --codebook-size "$codes" \
    --data "$data" --steps 0 --threads 2 --export "hdq-q$quality" --family hdq --quality "$quality" --weights-dir "$weights" \
    --share-weights hdq-shared
done
