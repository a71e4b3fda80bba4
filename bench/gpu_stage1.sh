#!/usr/bin/env bash
# Stage 1 on a GPU in one device call: the gpu-marked tests (tests/test_gpu.py), then the
# throughput of 6 random-weight XLM-R-large members over the dev texts, first eager, then
# compiled (--compile --width-multiple 64); bf16 + SDPA. Exits with the tests' status.
#
# Prepare here with `make gpu-assets` (wheels the device lacks in .whl/, the texts and the
# XLM-R tokenizer in .gpu_assets/), then run `bash bench/gpu_stage1.sh` on the device with
# carry [".whl", ".gpu_assets"]. On a CPU: SKIP_WHEELS=1 EXTRA="--tiny --docs 3 --members 2".
set -euo pipefail
ASSETS=${ASSETS:-.gpu_assets}
if [ -z "${SKIP_WHEELS:-}" ] && compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python3 -c "import torch, transformers, tokenizers; print('torch', torch.__version__,
'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__)"
echo "== pytest -m gpu tests/test_gpu.py"
tests=0
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py || tests=$?
for mode in "" "--compile --width-multiple 64"; do
    echo "== bench/gpu_stage1.py ${mode:-(eager)}"
    # shellcheck disable=SC2086  # mode and EXTRA are lists of options
    python3 bench/gpu_stage1.py --texts "$ASSETS/texts" --tokenizer "$ASSETS/tokenizer.json" \
        --members 6 --batch-size 128 --chunk-docs 64 --host-threads 4 $mode ${EXTRA:-}
done
exit $tests
