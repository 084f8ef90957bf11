#!/usr/bin/env bash
# Hash every artifact of the seed and strong recipes, a train-sae of each architecture and a small sweep, so that a
# refactor that should change no number can be checked byte for byte (run before and after, then diff the lists).
#
#   bash scripts/hash_artifacts.sh OUT > before.sha256      # about 10 minutes on 2 cores
#   QUICK=1 bash scripts/hash_artifacts.sh OUT > quick.sha256   # small sizes, about 2 minutes: a first check
# Wall-clock fields (JSON keys `seconds`, `train_seconds`, `completed_at`; the sweep table's `seconds` column) and
# plotly's random element ids in HTML are masked before hashing, and OUT itself (a sweep records its source's path);
# lock files (a process id) are left out.
set -euo pipefail
OUT=${1:?usage: hash_artifacts.sh OUT}
MONOSEM=${MONOSEM:-monosem}
SMALL=()
if [ -n "${QUICK:-}" ]; then
  SMALL=(--n-train 1000 --n-val 200 --n-test 200 --mlp-epochs 3 --sae-epochs 3 --causal-fit-pairs 256
         --causal-eval-pairs 256 --causal-isolation-pairs 128 --causal-das-steps 20 --causal-circuit-rows 32
         --circuit-epochs 3 --circuit-global-graphs 100 --circuit-label-rows 200 --circuit-pairs 32)
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
OUT=$(cd "$OUT" && pwd)
cd "$OUT" && find . -type f ! -name .monosem.lock | LC_ALL=C sort | python3 -c '
import csv, hashlib, io, re, sys
OUT = sys.argv[1].encode()
TIMING = re.compile(rb"\"(seconds|train_seconds|completed_at)\": *(\"[^\"]*\"|[-0-9.eE+]+|\{[^{}]*\})")
HOVER = re.compile(rb"seconds: [0-9.]+")  # the sweep plot hover text
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
for path in sys.stdin.read().split():
    data = open(path, "rb").read()
    if path.endswith((".json", ".html", ".jsonl")):
        data = HOVER.sub(b"seconds: 0", UUID.sub(b"<id>", TIMING.sub(rb"\"\1\": 0", data))).replace(OUT, b"<out>")
    elif path.endswith(".csv"):
        rows = list(csv.reader(io.StringIO(data.decode())))
        if rows and "seconds" in rows[0]:
            i = rows[0].index("seconds")
            rows = [rows[0]] + [r[:i] + ["0"] + r[i + 1:] for r in rows[1:]]
            out = io.StringIO(); csv.writer(out, lineterminator="\n").writerows(rows); data = out.getvalue().encode()
    print(hashlib.sha256(data).hexdigest(), path)
' "$OUT"

