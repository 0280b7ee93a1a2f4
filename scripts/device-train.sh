#!/usr/bin/env bash
# Train a first-party model's recipe on the lent GPU machine (device tool), no MLflow there.
#
#   scripts/device-train.sh cxr    DATA_DIR OUT_DIR   # cxr-pneumonia, sizes 160,224,288
#   scripts/device-train.sh retina DATA_DIR OUT_DIR   # retina-dr, train mode, 512 px
#
# The GPU image has torch, numpy, scipy, scikit-learn, OpenCV and safetensors but neither
# MONAI nor MLflow: MONAI travels as a wheel in .whl/, MLflow is logged afterwards on the
# development machine (cxr: a re-run of the recipe with the same --out resumes every fold
# and logs its recorded history; retina: `python -m medlens_retina_dr.recipe --out DIR
# --track-only`).
set -euo pipefail
what=$1 data=$2 out=$3
root=$(cd "$(dirname "$0")/.." && pwd)
if ! python3 -c 'import monai' 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target /tmp/site "$root"/.whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$root/plugins/cxr-pneumonia/src:$root/plugins/retina-dr/src:$root/validation/src:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
case $what in
cxr)
    python3 -m medlens_cxr_pneumonia.recipe --data "$data" --cache /tmp/cxr-cache \
        --out "$out" --sizes "${SIZES:-160,224,288}" --device "${DEVICE:-cuda}" --no-tracking --no-card
    ;;
retina)
    MEDLENS_FUNDUS_DIR=$data MEDLENS_CACHE=/tmp/retina-cache \
        python3 -m medlens_retina_dr.recipe --out "$out" --mode train --device "${DEVICE:-cuda}" \
        --side "${SIDE:-512}" --epochs "${EPOCHS:-60}" --batch-size 16 --lr 2e-3 \
        --threads 8 --no-tracking
    ;;
*) echo "usage: $0 cxr|retina DATA OUT" >&2; exit 2 ;;
esac
