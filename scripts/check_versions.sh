#!/usr/bin/env bash
# Import-and-parity check of the package against other releases of its requirements:
#   bash scripts/check_versions.sh 'jax==0.10.0' 'flax==0.12.0' 'optax==0.2.5'
# builds a fresh virtualenv (VENV=DIR to choose where), installs the package with the given pins on top of its own
# ranges (pyproject.toml) and constraints.txt, prints the versions it got, then runs the parity suite
# (JAX against the PyTorch reference) and the SAE family's tests with them. docs/install.md lists what was checked.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$(mktemp -d)/venv}
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$REPO/constraints.txt" "$@" "$REPO[dev]"
"$VENV/bin/python" - <<'PY'
from importlib.metadata import version
print("versions:", ", ".join(f"{d} {version(d)}" for d in ("jax", "jaxlib", "flax", "optax", "numpy", "torch")))
PY
cd "$REPO"
# Installed, not editable: tests import the checkout (rootdir on sys.path), the reference by its installed name.
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -n 2 parity_tests tests/test_public_api.py tests/jobs/test_train_sae.py
