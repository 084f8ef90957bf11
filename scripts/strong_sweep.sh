#!/usr/bin/env bash
# The sweep behind `--recipe strong` (second version, CHANGELOG.md), on the sweep engine: every
# architecture of the TopK family and JumpReLU at several sizes and sparsities on a strong run's harvested
# layer2, then the best settings at longer training; each SAE scored by the atlas and against the recipe's
# targets (scripts/strong_targets.py). About 40 minutes on 2 cores.
#
#   bash scripts/strong_sweep.sh runs/strong runs/strong_sweep     # RUN_DIR (a finished run) OUT
set -euo pipefail
RUN_DIR=${1:?usage: strong_sweep.sh RUN_DIR OUT}
OUT=${2:?usage: strong_sweep.sh RUN_DIR OUT}
MONOSEM=${MONOSEM:-monosem}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
$MONOSEM sweep --run-dir "$RUN_DIR" --variant topk,batchtopk,matryoshka --grid dict_size=128,256 --grid k=16,32,48 \
    --epochs 50 --out "$OUT/k"
$MONOSEM sweep --run-dir "$RUN_DIR" --variant jumprelu --grid dict_size=128,256 --grid l0_coeff=1e-4,3e-4,1e-3 \
    --epochs 50 --out "$OUT/jumprelu"
$MONOSEM sweep --run-dir "$RUN_DIR" --variant topk,batchtopk --grid epochs=100,200 --grid dict_size=128 --grid k=24,32 \
    --out "$OUT/epochs"
$PYTHON "$(dirname "$0")/strong_targets.py" "$RUN_DIR" "$OUT/k" "$OUT/jumprelu" "$OUT/epochs" --json "$OUT/targets.json" \
    | tee "$OUT/targets.md"
