"""Which concepts can an SAE feature detect at all, and at which hook point? The best feature of a run beside
the linear ceiling of each concept at every hook (layer1, layer2, layer3).

Usage (after `monosem run [--recipe strong] [--hook HOOK] --run-dir DIR`, whose atlas stage wrote
feature_atlas.json):

    python scripts/concept_ceiling.py --run-dir runs/strong [--families pointer,pointed,target,order] [--hooks layer1,layer2,layer3]

A `relu-l1` or `anthropic` SAE feature is active exactly where an affine function of its hook's activation
is positive, so no such feature detects a concept better than the best half-space of that activation does.
For each concept of the chosen families this prints the run's best SAE feature F1 (from the atlas, at the
run's hook) beside that ceiling at each hook, estimated by `linear_probe.linear_readout_f1` on the run's MLP: fitted
on the train rows (in-sample, the generous number) and checked on the val + test rows (the columns show the
held-out F1; the in-sample one at the run's hook). Then one line per family: its mean held-out ceiling at
each hook, so a reader sees where each concept family lives. The estimate comes from a search, so a true
ceiling can be somewhat higher. CHANGELOG.md keeps the measured runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from jax_impl.evaluation.atlas.document import ATLAS_JSON
from jax_impl.evaluation.atlas.linear_probe import ceilings_by_hook
from jax_impl.jobs.rundir import load_run
from jax_impl.models.mlp import HOOKS
from jax_impl.precision import highest_precision
from jax_impl.task.concepts import FAMILIES


@highest_precision  # float32 matmuls at full precision, as `monosem` computes them
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--families", default="pointer,pointed,target,order", help="comma-separated atlas families")
    parser.add_argument("--hooks", default=",".join(HOOKS), help="comma-separated hook points (default all)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    families, hooks = tuple(args.families.split(",")), tuple(args.hooks.split(","))
    if sorted(set(families) - set(FAMILIES)) or sorted(set(hooks) - set(HOOKS)):
        parser.error(f"--families must be some of {list(FAMILIES)} and --hooks some of {list(HOOKS)}")

    run = load_run(args.run_dir, log=lambda _: None)
    rows = run.rows()
    fit_rows = np.arange(len(rows)) < len(run.splits["train"])
    ceilings = ceilings_by_hook(run.mlp, rows, run.shape, fit_rows, hooks, families)
    best_feature = {c["concept"]: c for c in json.loads((args.run_dir / ATLAS_JSON).read_text())["concepts"]}

    print(f"{args.run_dir}: {len(rows)} rows, SAE at {run.hook}; ceilings fitted on the {fit_rows.sum()} train rows, "
          f"F1 on the other {len(rows) - fit_rows.sum()} (held out)\n")
    own = f"{run.hook} ceiling, train rows"
    print(f"| concept | family | rows | best SAE feature F1 | {own} | " + " | ".join(f"{h} ceiling" for h in hooks) + " |")
    print("|---|---|---:|---:|---:|" + "---:|" * len(hooks))
    for i, name in enumerate(ceilings["concepts"]):
        fit = ceilings["hooks"].get(run.hook, {}).get("fit")
        cells = " | ".join(f"{ceilings['hooks'][h]['held_out'][i]:.3f}" for h in hooks)
        print(f"| `{name}` | {ceilings['families'][i]} | {ceilings['rows'][i]} | {best_feature[name]['best_f1']:.3f} | "
              f"{'' if fit is None else f'{fit[i]:.3f}'} | {cells} |")
    print("\n| family | concepts | best SAE feature F1 (mean) | " + " | ".join(f"{h} ceiling (mean)" for h in hooks) + " |")
    print("|---|---:|---:|" + "---:|" * len(hooks))
    names = np.asarray(ceilings["concepts"])
    for family in families:
        mine = np.asarray(ceilings["families"]) == family
        best = np.mean([best_feature[n]["best_f1"] for n in names[mine]])
        cells = " | ".join(f"{ceilings['hooks'][h]['held_out'][mine].mean():.3f}" for h in hooks)
        print(f"| {family} | {mine.sum()} | {best:.3f} | {cells} |")
    if args.json:
        out = {"run_dir": str(args.run_dir), "hook": run.hook, "concepts": ceilings["concepts"],
               "families": ceilings["families"], "rows": ceilings["rows"].tolist(),
               "best_feature_f1": [best_feature[n]["best_f1"] for n in names],
               "hooks": {h: {k: v.tolist() for k, v in d.items()} for h, d in ceilings["hooks"].items()}}
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
