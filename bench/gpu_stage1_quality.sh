#!/usr/bin/env bash
# Stage-1 quality with properly trained MiniLM members, on a GPU machine: train 2 members
# per class (2 folds) on spaccc_train, then compare ensemble, single members and the
# gazetteer on cardioccc_dev. Needs ASSETS with whl/ (wheels), minilm/ and data/.
set -euo pipefail
ASSETS=${ASSETS:-.gpu_assets2}
STEPS=${STEPS:-1000}
# the recipe of the best CPU run (bench/RESULTS.md): lr 1e-4, no dropout inside attention
LR=${LR:-1e-4}
ATTN_DROPOUT=${ATTN_DROPOUT:-0.0}
OUTDIR=${OUT:-runs/gpu_quality}
mkdir -p "$OUTDIR"
[ -n "${SKIP_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$ASSETS"/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cat > /tmp/cfg.json <<JSON
{"learning_rate": $LR, "warmup_steps": 100, "max_steps": $STEPS, "batch_size": 8,
 "max_length": 256, "stride": 32, "logging_steps": 250, "attention_dropout": $ATTN_DROPOUT}
JSON
start=$(date +%s)
python3 -m pipeline train --corpus "$ASSETS/data/spaccc_train" --out /tmp/ens \
    --encoder "$ASSETS/minilm" --folds 2 --config /tmp/cfg.json 2>&1 | grep -v "it/s\]" \
    | tee "$OUTDIR/train.log" | grep -E "validation|wrote|member"
echo "training took $(( $(date +%s) - start )) s"
python3 bench/stage1_quality.py --ensemble /tmp/ens --train "$ASSETS/data/spaccc_train" \
    --dev "$ASSETS/data/cardioccc_dev" --threshold 0.5 --thresholds 0.3,0.4,0.6,0.7 \
    2>/dev/null | tee "$OUTDIR/quality.md"
echo "all took $(( $(date +%s) - start )) s"
