#!/usr/bin/env bash
# GPU runbook, step 2 of 2: train the hdq levels jointly on a GPU machine.
#
# Step 1, here (a checkout with ../shared beside it, network to the package registries):
#   PHOTO_SCALE=0.1 ../shared/scripts/gpu-bundle.sh && rm -rf .traindata/photos \
#     .traindata/kodak/kodim0[47].png .traindata/kodak/kodim[12]*.png
#   # wheels -> .whl/, BSDS500's 300 train and val images + kodim01 (validation) -> .traindata/
#   # (git-ignored). Photos at a tenth of their size are smaller than the 256-pixel crops, so they
#   # only took room in the 64 MiB that travels; five Kodak images make room too. Tree and bundle:
#   # 65.96 of 67.1 MB (README, "GPU runbook").
# Step 2, on the GPU machine, from the repository root, with .whl and .traindata carried:
#   scripts/gpu-train.sh [MINUTES]
# It starts the family (dqcodec train --arch hdq-family) from the levels committed in
# models/weights (hdq-q1, hdq-q2, ... sharing hdq-shared.safetensors; fresh optimizer), trains all
# of them at once, each batch split over their lambdas, for at most MINUTES minutes (default 8:
# with install and export it stays under 9), exports the levels again (the moving average of the
# weights over about the last 1 000 steps, --average-decay 0.999), and leaves in $OUT
# (3 files, each under 16 MiB):
#   hdq-levels.tar.gz               hdq-q*.json/.safetensors and hdq-shared.safetensors, the
#                                   weights the next run starts from (unpack them into models/weights here,
#                                   then count their tables over more crops: dqcodec fit-tables
#                                   models/weights/hdq-q1 ... --crops 1536)
#   log.jsonl, training.png         the training log and its plot (dqcodec plot-training)
set -euo pipefail
minutes=${1:-8}
out=${OUT:?set OUT to the folder the results go to}

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# pyproject maps the package's sub-packages to top-level folders; link them into one package tree.
package=/tmp/package/dqcodec
mkdir -p "$package"
ln -sf "$PWD"/dqcodec/* "$package"/
for folder in codec models train eval; do ln -sfn "$PWD/$folder" "$package/$folder"; done
export PYTHONPATH=/tmp/package:/tmp/site DQCODEC_DATA=$PWD/.traindata PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "the levels in models/weights (their architecture and LAMBDA:K), at most $minutes minutes"
run=/tmp/run-family
weights=/tmp/weights
python3 -m dqcodec.codec.cli train --arch hdq-family --out "$run" --start-levels models/weights \
  --data "$PWD/.traindata" --device cuda --batch-size 16 --crop 256 --lr 5e-5 --average-decay 0.999 \
  --steps 10000000 --max-minutes "$minutes" \
  --validate-every 500 --validation-images 1 --checkpoint-every 1000 \
  --export hdq --family hdq --quality 1 --weights-dir "$weights" --measure-images 0 --share-weights hdq-shared
tar -C "$weights" -czf "$out/hdq-levels.tar.gz" .
cp "$run/log.jsonl" "$out/log.jsonl"
python3 -m dqcodec.codec.cli plot-training "$run" -o "$out/training.png"
ls -l "$out"
