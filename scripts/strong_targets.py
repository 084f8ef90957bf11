"""Score SAEs against the strong recipe's targets (issue 12) from their feature_atlas.json files: a run
directory's own atlas, or every configuration of a `monosem sweep --run-dir` folder.

    python scripts/strong_targets.py runs/strong                   # one run (its atlas, manifest, ceilings)
    python scripts/strong_targets.py runs/sweep_layer2 [...]       # every configuration of one or more sweeps

Per SAE: explained variance, L0, dead share, monosemantic share of live features, the worst pointer concept's
best feature F1, spliced minus clean MLP MSE, the pointer swaps that work, and how many targets it meets:
every pointer F1 >= 0.95, >= 60% monosemantic, dead < 5%, EV >= 0.99, spliced <= clean + 0.01. Prints a
markdown table sorted by targets met then monosemantic share; `--json FILE` writes the rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FAMILIES = ("pointer", "pointed", "target", "order")
TARGETS = {
    "pointer F1 >= 0.95": lambda r: r["min_pointer_f1"] >= 0.95,
    ">= 60% monosemantic": lambda r: r["monosemantic_share"] >= 0.60,
    "dead < 5%": lambda r: r["dead_fraction"] < 0.05,
    "EV >= 0.99": lambda r: r["explained_variance"] >= 0.99,
    "spliced <= clean + 0.01": lambda r: r["spliced_minus_clean"] <= 0.01,
}


def score(atlas_path: Path, name: str) -> dict:
    doc = json.loads(atlas_path.read_text())
    m, s = doc["metrics"], doc["summary"]
    pointer = [c["best_f1"] or 0.0 for c in doc["concepts"] if c["family"] == "pointer"]
    row = {
        "name": name, "hook": doc.get("hook", "layer2"),
        "explained_variance": m["explained_variance"], "l0": m["l0"], "dead_fraction": m["dead_fraction"],
        "monosemantic_share": s["monosemantic_share"] or 0.0, "live": s["live"],
        "min_pointer_f1": min(pointer), "pointer_f1": pointer,
        "spliced_minus_clean": m["spliced_mse"] - m["mse"],
        "pointer_swaps_work": s.get("pointer_swaps_work"),
        "family_best_f1": {f: sum(c["best_f1"] or 0.0 for c in doc["concepts"] if c["family"] == f)
                           / max(1, sum(c["family"] == f for c in doc["concepts"])) for f in FAMILIES},
    }
    row["met"] = [t for t, ok in TARGETS.items() if ok(row)]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for folder in args.folders:
        own = folder / "feature_atlas.json"
        if own.exists():
            rows.append(score(own, str(folder)))
        for path in sorted(folder.glob("*/feature_atlas.json")):
            config = json.loads((path.parent / "sae_config.json").read_text()) if (path.parent / "sae_config.json").exists() else {}
            rows.append(score(path, f"{folder.name}/{path.parent.name}") | {"config": config.get("config")})
    rows.sort(key=lambda r: (-len(r["met"]), -r["monosemantic_share"]))
    print("| SAE | hook | EV | L0 | dead | monosemantic | worst pointer F1 | spliced - clean | swaps | targets met |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['name']} | {r['hook']} | {r['explained_variance']:.4f} | {r['l0']:.1f} | {100 * r['dead_fraction']:.1f}% | "
              f"{100 * r['monosemantic_share']:.1f}% | {r['min_pointer_f1']:.3f} | {r['spliced_minus_clean']:.4f} | "
              f"{r['pointer_swaps_work']} | {len(r['met'])}/5 |")
    print("\n| family | closest SAE (mean over the family's concepts of the best feature F1) | F1 |")
    print("|---|---|---:|")
    for family in FAMILIES:
        best = max(rows, key=lambda r: r["family_best_f1"][family])
        print(f"| {family} | {best['name']} | {best['family_best_f1'][family]:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
