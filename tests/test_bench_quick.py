"""`benchmarks/bench.py --quick` runs end to end and writes results of the documented structure.

Smoke check only: the quick sizes are tiny and nothing here asserts on timings.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"

STAGES = [
    "data generation", "MLP training (per epoch)", "harvest", "SAE training (per epoch)", "probe", "reports",
    "MLP training (seed recipe, extrapolated)", "SAE training (seed recipe, extrapolated)",
]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_bench_writes_results(tmp_path):
    bench = load_bench()
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["meta"]["quick"] is True
    assert results["meta"]["machine"]["logical_cpus"] >= 1
    assert results["peak"]["peak_gflops"] > 0
    assert list(results["stages"]) == STAGES
    for name, stage in results["stages"].items():
        for side in ("jax_seconds", "torch_seconds"):
            assert stage[side]["median"] > 0, (name, side)
        assert stage["torch_over_jax"] > 0
        assert stage["jax_samples_per_s"] > 0 and stage["torch_samples_per_s"] > 0
    for name in ("MLP training (per epoch)", "SAE training (per epoch)"):
        stage = results["stages"][name]
        assert stage["flops"] > 0 and stage["jax_pct_peak"] > 0 and stage["torch_pct_peak"] > 0
        assert stage["jax_compile_seconds"]["n"] == 1
    assert results["pipeline"]["reference_seconds"] > 0
    assert {r["stage"] for r in results["matmuls"]} == {"mlp", "sae"}
    assert set(results["targets"]) >= {"mlp_pct_peak", "sae_pct_peak"}

    markdown = (tmp_path / "results.md").read_text()
    assert "| stage |" in markdown and "MLP training (per epoch)" in markdown


@pytest.mark.slow  # 25 s; test_quick_bench_writes_results keeps the bench's quick mode in make test
def test_sae_family_bench_quick_writes_every_architecture(tmp_path):
    """The SAE bench's smoke run: every architecture's JAX epoch beside its torch loop (tiny sizes)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from jax_impl import saes

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_saes.py"
    subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], check=True, capture_output=True)
    results = json.loads((tmp_path / "saes.json").read_text())
    assert set(results["archs"]) == set(saes.NAMES)
    assert all(a["jax_epoch_s"] > 0 and a["torch_epoch_s"] > 0 for a in results["archs"].values())
