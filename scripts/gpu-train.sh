#!/usr/bin/env bash
# GPU runbook, step 2 of 2: train one level of the hierarchical DQ codec on a GPU machine.
#
# Step 1, here (a checkout with ../shared beside it, network to the package registries):
#   PHOTO_SCALE=0.1 ../shared/scripts/gpu-bundle.sh && rm -rf .traindata/photos .traindata/kodak/kodim[12]*.png
#   # wheels -> .whl/, BSDS500 + 3 Kodak images (validation) -> .traindata/ (git-ignored). Photos at
#   # a tenth of their size are smaller than the 256-pixel crops, so they only took room in the
#   # 64 MiB that travels, and 3 validation images keep the total under it with some margin.
# Step 2, on the GPU machine, from the repository root, with .whl and .traindata carried:
#   scripts/gpu-train.sh LEVEL [MINUTES]
# It resumes level LEVEL from its committed weights checkpoints/hdq-qLEVEL (fresh optimizer), or,
# when that level has none yet, from the nearest committed level with this level's lambda (its
# fine codebooks refitted at that lambda), or from the block start (block PCA and ECVQ codebooks,
# fitted in about a minute); trains for at most
# MINUTES minutes (default 8: with install and export it stays under 9), saves, exports, and
# leaves in $OUT (4 files, each under 16 MiB):
#   hdq-qLEVEL.safetensors, hdq-qLEVEL.json   the weights the next run resumes from (commit them
#                                             to checkpoints/ here)
#   log-qLEVEL.jsonl, training-qLEVEL.png     the training log and its plot (dqcodec plot-training)
set -euo pipefail
level=${1:?usage: scripts/gpu-train.sh LEVEL [MINUTES]}
minutes=${2:-8}
out=${OUT:?set OUT to the folder the results go to}
case $level in  # rate_lambda of each level: squared pixel error per bit (see dqcodec train --help)
  1) lambda=0.03 ;;
  2) lambda=0.012 ;;
  3) lambda=0.005 ;;
  4) lambda=0.002 ;;
  *) echo "LEVEL must be 1, 2, 3 or 4" >&2; exit 2 ;;
esac

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# pyproject maps the package's sub-packages to top-level folders; link them into one package tree.
package=/tmp/package/dqcodec
mkdir -p "$package"
ln -sf "$PWD"/dqcodec/* "$package"/
for folder in codec models train eval; do ln -sfn "$PWD/$folder" "$package/$folder"; done
export PYTHONPATH=/tmp/package:/tmp/site DQCODEC_DATA=$PWD/.traindata PYTHONUNBUFFERED=1

start=()  # no committed level: the recipe's block start
for candidate in $level 2 3 1 4; do
  if [[ -f checkpoints/hdq-q$candidate.json ]]; then start=(--init-from "checkpoints/hdq-q$candidate"); break; fi
done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "level $level, lambda $lambda, start: ${start[*]}, at most $minutes minutes"
run=/tmp/run-q$level
python3 -m dqcodec.codec.cli train --arch hdq --out "$run" "${start[@]}" --lambda "$lambda" \
  --data "$PWD/.traindata" --device cuda --batch-size 16 --crop 256 --lr 1e-4 --steps 10000000 --max-minutes "$minutes" \
  --validate-every 500 --validation-images 3 --checkpoint-every 1000 \
  --export "hdq-q$level" --family hdq --quality "$level" --weights-dir "$out" --measure-images 0
cp "$run/log.jsonl" "$out/log-q$level.jsonl"
python3 -m dqcodec.codec.cli plot-training "$run" -o "$out/training-q$level.png"
ls -l "$out"
