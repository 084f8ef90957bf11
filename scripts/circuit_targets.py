"""Measure issue 26's targets for `monosem circuit` on a run (the strong recipe's): replacement exact match
against the MLP's, graph completeness with <= 30 features on 1,000 held-out inputs, agreement of interventions
with attributions, the global view against the causal map, and the stage's time (fresh and with the transcoders
read back). Prints a table; every number is measured, a missed target is printed as measured.

    PYTHONPATH=$PWD python scripts/circuit_targets.py --run-dir /tmp/strong_run --out /tmp/circuit_targets [--circuit-k 8,8,8 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

from jax_impl.evaluation.circuit.config import CircuitConfig
from jax_impl.jobs.circuit import circuit
from jax_impl.jobs.rundir import load_run
from jax_impl.precision import matmul_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="a scratch folder (emptied first)")
    parser.add_argument("--input", default="8,9,5,1,3,2,9,4,7,1")
    parser.add_argument("--json", type=Path, help="also write the measured numbers here")
    for f in dataclasses.fields(CircuitConfig):
        default = getattr(CircuitConfig(), f.name)
        kind = (lambda t: tuple(int(v) for v in t.split(","))) if isinstance(default, tuple) else type(default)
        parser.add_argument(f"--circuit-{f.name.replace('_', '-')}", dest=f.name, type=kind, default=default)
    args = parser.parse_args()
    config = CircuitConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CircuitConfig)}).validate()
    shutil.rmtree(args.out, ignore_errors=True)
    run = load_run(args.run_dir)
    row = [int(v) for v in args.input.split(",")]
    with matmul_precision():
        t0 = time.perf_counter()
        doc = circuit(run, [row], out=args.out, config=config)
        fresh = time.perf_counter() - t0
        t0 = time.perf_counter()
        circuit(load_run(args.run_dir), [row], out=args.out, config=config, log=lambda _: None)
        cached = time.perf_counter() - t0
    t = doc["replacement"]["test"]
    s = doc["global"]["summary"]
    ratio = t["replacement"]["exact_match"] / t["mlp"]["exact_match"]
    causal = doc["global"]["causal_map"]
    named = [c for c in causal if c["features"]]
    rows = [
        ("replacement exact match / MLP's", ">= 0.99", f"{ratio:.4f} ({t['replacement']['exact_match']:.4f} / "
         f"{t['mlp']['exact_match']:.4f}; with errors {t['replacement_with_errors']['exact_match']:.4f})", ratio >= 0.99),
        (f"graphs: completeness >= 0.9 with <= {config.max_feature_nodes} features", ">= 0.90",
         f"{s['complete_share']:.3f} of {s['graphs']} (mean completeness {s['completeness_mean']:.3f}, "
         f"mean {s['features_mean']:.1f} features)", s["complete_share"] >= 0.9),
        ("edge checks agree", ">= 0.90", f"{s['edges_agree']} of {s['edges']}", (s["edges_agree"] or 0) >= 0.9),
        ("feature ablations agree", "(>= 0.90)", f"{s['ablations_agree']} of {s['ablations']}",
         (s["ablations_agree"] or 0) >= 0.9),
        ("global view names A, B, D, T", "all four", ", ".join(f"{c['variable']}:{c['features']}" for c in causal),
         len(named) == 4),
        ("... at the causal map's hook (read or written)", "all four", ", ".join(
            f"{c['variable']}: {c['circuit_layer']} vs {c['causal_hook']} ({c['agrees']})" for c in causal),
         all(c["agrees"] for c in causal)),
        ("stage time, transcoders trained (s)", "<= 20", f"{fresh:.1f}", fresh <= 20),
        ("stage time, transcoders read back (s)", "<= 20", f"{cached:.1f}", cached <= 20),
    ]
    rows.insert(4, ("  ... by the ablated feature's layer / edge's target layer", "", f"ablations {s['ablations_agree_by_layer']}; "
                    f"edges {s['edges_agree_by_target']}", True))
    load = os.getloadavg()[0]
    print(f"\nTargets on {args.run_dir} ({os.cpu_count()} CPUs, load average {load:.1f}); tolerance "
          f"atol {config.atol} + rtol {config.rtol} |attributed|")
    print(f"{'target':<52} {'wanted':<10} {'measured':<70} met")
    for name, wanted, measured, met in rows:
        print(f"{name:<52} {wanted:<10} {measured:<70} {'' if not wanted else 'yes' if met else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps({"config": dataclasses.asdict(config), "fresh_s": fresh, "cached_s": cached,
                                         "load": load, "replacement": t, "summary": s, "causal": causal}, indent=1))


if __name__ == "__main__":
    main()
