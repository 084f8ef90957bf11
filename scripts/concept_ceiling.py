"""Which concepts can an SAE feature on `layer2` detect at all? The best feature beside the linear ceiling.

Usage (after `monosem run [--recipe strong] --run-dir DIR`, whose atlas stage wrote feature_atlas.json):

    python scripts/concept_ceiling.py --run-dir runs/strong [--families pointer,pointed,target,order]

A `relu-l1` or `anthropic` SAE feature is active exactly where an affine function of `layer2` is positive,
so no such feature detects a concept better than the best half-space of `layer2` does. For each concept
of the chosen families this prints the run's best SAE feature F1 (from the atlas) beside that ceiling,
estimated by `atlas.linear_readout_f1` on the run's MLP: fitted on the train rows (in-sample, the generous
number) and checked on the val + test rows. The estimate comes from a search, so the true ceiling can be
somewhat higher; a concept far below a target F1 even in-sample will not get a feature at that F1 from
any such SAE on this MLP. docs/strong_recipe.md keeps the table of the strong run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from jax_impl import analysis, atlas
from jax_impl.cli import _run_config
from jax_impl.rundir import Run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--families", default="pointer,pointed,target,order", help="comma-separated atlas families")
    args = parser.parse_args()
    families = args.families.split(",")
    unknown = sorted(set(families) - set(atlas.FAMILIES))
    if unknown:
        parser.error(f"--families: unknown {unknown}; expected some of {list(atlas.FAMILIES)}")

    run = Run(args.run_dir, _run_config(args.run_dir))
    rows = run.rows()
    fit_rows = np.arange(len(rows)) < len(run.splits["train"])
    _, layer2 = analysis.mlp_forward(run.mlp, rows.inputs)
    concepts = atlas.task_concepts(rows.inputs, run.shape.x_dim, run.shape.y_dim)
    chosen = [k for k, fam in enumerate(concepts.families) if fam in families]
    fit_f1, held_f1 = atlas.linear_readout_f1(layer2, concepts.mask[:, chosen], fit_rows)
    best_feature = {c["concept"]: c for c in json.loads((args.run_dir / atlas.ATLAS_JSON).read_text())["concepts"]}

    print(f"{args.run_dir}: {len(rows)} rows; ceiling fitted on the {fit_rows.sum()} train rows, "
          f"checked on the other {len(rows) - fit_rows.sum()}\n")
    print("| concept | family | rows | best SAE feature F1 | linear ceiling F1 (train rows) | same read-out, held-out rows |")
    print("|---|---|---:|---:|---:|---:|")
    for i, k in enumerate(chosen):
        name = concepts.names[k]
        print(f"| `{name}` | {concepts.families[k]} | {concepts.mask[:, k].sum()} | "
              f"{best_feature[name]['best_f1']:.3f} | {fit_f1[i]:.3f} | {held_f1[i]:.3f} |")


if __name__ == "__main__":
    main()
