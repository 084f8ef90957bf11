#!/usr/bin/env bash
# Hash every artifact of the seed and strong recipes, a train-sae of each architecture and a small sweep, so that a
# refactor that should change no number can be checked byte for byte (run before and after, then diff the lists).
#
#   bash scripts/hash_artifacts.sh OUT > before.sha256      # about 10 minutes on 2 cores
#   QUICK=1 bash scripts/hash_artifacts.sh OUT > quick.sha256   # small sizes, about 2 minutes: a first check
# The lock files hold a process id: leave them out of a comparison (grep -v monosem.lock).
set -euo pipefail
OUT=${1:?usage: hash_artifacts.sh OUT}
MONOSEM=${MONOSEM:-monosem}
SMALL=()
if [ -n "${QUICK:-}" ]; then
  SMALL=(--n-train 1000 --n-val 200 --n-test 200 --mlp-epochs 3 --sae-epochs 3 --causal-fit-pairs 256
         --causal-eval-pairs 256 --causal-isolation-pairs 128 --causal-das-steps 20 --causal-circuit-rows 32)
fi
rm -rf "$OUT"; mkdir -p "$OUT"
$MONOSEM run --run-dir "$OUT/seed" --checkpoint-every off "${SMALL[@]}" >/dev/null
$MONOSEM run --run-dir "$OUT/strong" --recipe strong --checkpoint-every off "${SMALL[@]}" >/dev/null
ACTS="$OUT/seed/mlp_activations.safetensors"
for variant in relu-l1 topk anthropic batchtopk matryoshka jumprelu; do
  $MONOSEM train-sae --activations "$ACTS" --out "$OUT/train_sae/$variant" --variant "$variant" --dict-size 64 \
      --epochs 3 --checkpoint-every off >/dev/null
done
$MONOSEM sweep --activations "$ACTS" --out "$OUT/sweep" --variant topk,relu-l1 --grid dict_size=32,64 --epochs 2 \
    --no-atlas >/dev/null
cd "$OUT" && find . -type f | LC_ALL=C sort | xargs sha256sum
