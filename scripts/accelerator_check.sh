#!/usr/bin/env bash
# The accelerator path, checked in one go on a GPU machine: the parity suite with JAX on the GPU (float32
# matmuls at highest precision), a timed `monosem run` (GPU, then the same machine's CPU), a small sweep, and
# every SAE architecture's epoch against the same loop in torch on CUDA. Prints one summary and writes
# accelerator_summary.json (plus each step's log) into $OUT (default ./accelerator_out).
#
# The GPU machines this project can use reach no package registry. They have their own Python (3.12) with GPU
# builds of jax, flax, optax, chex and torch, so this script uses those as they are: it puts the repository on
# PYTHONPATH instead of installing it, and installs only the wheels that machine lacks (openpyxl, et-xmlfile,
# plotly) from .whl/, into a private folder, without touching its packages.
#
#   bash scripts/accelerator_check.sh --prepare          # here, with network: download the missing wheels into .whl/
#   bash scripts/accelerator_check.sh                    # there (repository root): the full check, about 5-8 minutes
#   bash scripts/accelerator_check.sh --quick            # smaller sizes, one parity file: about a minute
#   bash scripts/accelerator_check.sh --quick --allow-cpu   # a dry run of every step on a machine without a GPU
#
# Environment: PYTHON (default python3), OUT (default ./accelerator_out), WHEELS (default .whl).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$REPO/accelerator_out}
WHEELS=${WHEELS:-$REPO/.whl}
QUICK=0
ALLOW_CPU=0
MISSING_WHEELS=("openpyxl==3.1.5" "et-xmlfile==2.0.0" "plotly==6.3.1")

for arg in "$@"; do
    case "$arg" in
        --prepare)
            mkdir -p "$WHEELS"
            "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
                --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
                -d "$WHEELS" "${MISSING_WHEELS[@]}" || exit 2
            echo "wheels for the GPU machine in $WHEELS:"; ls "$WHEELS"; exit 0 ;;
        --quick) QUICK=1 ;;
        --allow-cpu) ALLOW_CPU=1 ;;
        *) echo "accelerator_check.sh: unknown argument $arg (expected --prepare, --quick, --allow-cpu)" >&2; exit 2 ;;
    esac
done

mkdir -p "$OUT"
SITE="$OUT/site"
# Wheels only for what is missing: an import that works keeps the machine's own version.
if ! "$PYTHON" -c "import openpyxl, plotly" 2>/dev/null; then
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$WHEELS"/*.whl || { echo "could not install the wheels from $WHEELS" >&2; exit 2; }
    else
        echo "openpyxl/plotly are missing and $WHEELS has no wheels: run --prepare where pip reaches PyPI" >&2; exit 2
    fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
[ -d "$SITE" ] && export PYTHONPATH="$PYTHONPATH:$SITE"
export JAX_DEFAULT_MATMUL_PRECISION=highest  # float32 matmuls in full float32 on the GPU (no TF32)
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # leave GPU memory to torch too
MONOSEM=("$PYTHON" -m jax_impl.cli)

"$PYTHON" - "$ALLOW_CPU" > "$OUT/versions.json" <<'EOF' || { cat "$OUT/versions.json"; exit 2; }
import json, sys
import jax, flax, optax, chex, numpy, torch
backend = jax.default_backend()
info = {"python": sys.version.split()[0], "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
        "chex": chex.__version__, "numpy": numpy.__version__, "torch": torch.__version__, "jax_backend": backend,
        "jax_devices": [str(d) for d in jax.devices()], "torch_cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
print(json.dumps(info, indent=2))
if backend != "gpu" and sys.argv[1] != "1":
    sys.exit(f"JAX sees no GPU (backend {backend}); --allow-cpu runs the steps anyway")
EOF
cat "$OUT/versions.json"
TORCH_DEVICE=$("$PYTHON" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")

declare -A STATUS SECONDS_OF
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, record status and seconds
    local name=$1; shift
    local start=$SECONDS
    echo "== $name: $*"
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    STATUS[$name]=$rc; SECONDS_OF[$name]=$((SECONDS - start))
    tail -n 3 "$OUT/$name.log"
    echo "   -> exit $rc in ${SECONDS_OF[$name]} s"
}

if [ $QUICK = 1 ]; then
    PARITY=(parity_tests/test_sae_family.py)
    RUN_FLAGS=(--n-train 1024 --n-val 256 --n-test 256 --mlp-epochs 5 --sae-epochs 3 --dict-size 512)
    BENCH_FLAGS=(--quick)
else
    PARITY=(parity_tests)
    RUN_FLAGS=()
    BENCH_FLAGS=(--reps 3)
fi

step parity "$PYTHON" -m pytest -q -p no:cacheprovider "${PARITY[@]}"
step run_gpu "${MONOSEM[@]}" run --run-dir "$OUT/run_gpu" "${RUN_FLAGS[@]}"
step run_cpu env JAX_PLATFORMS=cpu "${MONOSEM[@]}" run --run-dir "$OUT/run_cpu" "${RUN_FLAGS[@]}"
if "${MONOSEM[@]}" sweep --help > /dev/null 2>&1; then
    step sweep "${MONOSEM[@]}" sweep --activations "$OUT/run_gpu/mlp_activations.pt" --out "$OUT/sweep" \
        --variant topk --grid k=16,32 --grid seed=0,1,2,3 --dict-size 512 --epochs 5
fi
step bench_saes "$PYTHON" benchmarks/bench_saes.py "${BENCH_FLAGS[@]}" --no-streaming --torch-device "$TORCH_DEVICE" \
    --out "$OUT/bench"

STATUS_JSON=$(for k in "${!STATUS[@]}"; do printf '"%s": {"exit": %s, "seconds": %s},' "$k" "${STATUS[$k]}" "${SECONDS_OF[$k]}"; done)
"$PYTHON" - "$OUT" "{${STATUS_JSON%,}}" <<'EOF'
import json, sys
from pathlib import Path
out, steps = Path(sys.argv[1]), json.loads(sys.argv[2])
summary = {"versions": json.loads((out / "versions.json").read_text()), "steps": steps}
for name in ("run_gpu", "run_cpu"):
    manifest = out / name / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        summary[name] = {"stage_seconds": {k: round(v["seconds"], 2) for k, v in m["stages"].items()},
                         "mlp_test_mse": m["metrics"].get("mlp", {}).get("test", {}).get("mse")}
bench = out / "bench" / "saes.json"
if bench.exists():
    b = json.loads(bench.read_text())
    summary["sae_epoch_torch_over_jax"] = {k: round(v["speedup"], 2) for k, v in b["archs"].items()}
(out / "accelerator_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print("\n== summary")
print(f"devices: jax {summary['versions']['jax_devices']}, torch {summary['versions']['gpu'] or 'cpu'}")
for name, s in steps.items():
    print(f"  {name:<11} exit {s['exit']}  {s['seconds']} s")
for name in ("run_gpu", "run_cpu"):
    if name in summary:
        print(f"  {name}: stages {summary[name]['stage_seconds']}")
if "sae_epoch_torch_over_jax" in summary:
    print(f"  SAE epoch, torch / JAX: {summary['sae_epoch_torch_over_jax']}")
sys.exit(1 if any(s["exit"] for s in steps.values()) else 0)
EOF
