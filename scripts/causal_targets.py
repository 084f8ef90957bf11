"""Issue 23's targets on a finished run, measured: the causal map with the run's own SAE at every hook, and at
the run's hook with SAEs of other seeds (same recipe, trained on the run's activations), plus optional other
architectures. Writes OUT/targets.json and prints a markdown table (mean and spread over the SAE seeds).

    python scripts/causal_targets.py --run-dir runs/strong --out runs/strong_targets --seeds 0,1,2 --hooks layer2,layer3
    python scripts/causal_targets.py --run-dir runs/strong --out runs/strong_relu --seeds 0 \
        --variant relu-l1 --dict-size 2048 --epochs 100

Targets (issue 23 item 7): for every variable whose DAS IIA reaches >= 0.95 at some hook with rank <= 16, a named
set of <= 16 features at that hook with IIA >= 0.9 and isolation >= 0.9; the sparse circuit >= 95%.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from jax_impl.data.harvest import harvest_activations
from jax_impl.evaluation.causal.config import CausalConfig
from jax_impl.jobs.causal import causal_map
from jax_impl.jobs.rundir import ACTIVATIONS_PATH, Run, run_config
from jax_impl.jobs.train_sae import TrainSAEConfig, train_sae
from jax_impl.precision import highest_precision


def _sae_for_seed(run: Run, hook: str, out: Path, seed: int, variant: str, dict_size: int, arch, epochs: int,
                  batch_size: int, lr: float) -> Path:
    """An SAE of the recipe (or the given architecture) at `hook`, trained with `seed` on the train split's
    activations there (the run's own file at its hook, else harvested into OUT)."""
    folder = out / f"sae_{variant}_{dict_size}_{hook}_seed{seed}"
    if not (folder / "sae.pth").exists():
        activations = run.run_dir / ACTIVATIONS_PATH
        if hook != run.hook:
            activations = out / f"activations_{hook}.npy"
            if not activations.exists():
                out.mkdir(parents=True, exist_ok=True)
                np.save(activations, harvest_activations(run.mlp, run.splits["train"].inputs, hook))
        # log_every 10: what its sae_config.json has always recorded
        config = TrainSAEConfig(variant=variant, dict_size=dict_size, architecture=arch, epochs=epochs,
                                batch_size=batch_size, lr=lr, log_every=10, seed=seed)
        train_sae(activations, folder, config, log=lambda _: None)
    return folder / "sae.pth"


@highest_precision  # float32 matmuls at full precision, as `monosem` computes them
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2", help="SAE seeds; 0 with the run's own recipe is the run's SAE")
    p.add_argument("--hooks", help="hooks to map for every seed (default the run's hook)")
    p.add_argument("--variant", help="another architecture than the run's (its defaults, or the flags below)")
    p.add_argument("--dict-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--k", type=int)
    args = p.parse_args(argv)
    cfg = run_config(args.run_dir)
    sae = cfg.sae
    variant = args.variant or sae.variant
    from jax_impl import saes

    arch = sae.architecture if variant == sae.variant else saes.get(variant).config()
    if args.k is not None:
        arch = dataclasses.replace(arch, k=args.k)
    dict_size = args.dict_size or sae.dict_size
    epochs = args.epochs or sae.epochs
    own = variant == sae.variant and dict_size == sae.dict_size and epochs == sae.epochs and args.k is None
    results = []
    hooks = args.hooks.split(",") if args.hooks else [cfg.hook]
    for seed in (int(s) for s in args.seeds.split(",")):
        out = args.out / f"seed{seed}"
        run = Run(args.run_dir, cfg, out_dir=out)
        sae_paths = {}
        for hook in hooks:  # the run's own SAE at its hook for its own seed and recipe; else one trained here
            if not (own and seed == cfg.seed and hook == cfg.hook):
                sae_paths[hook] = _sae_for_seed(run, hook, args.out, seed, variant, dict_size, arch, epochs,
                                                sae.batch_size, sae.lr)
        doc = causal_map(run, hooks=hooks, sae_paths=sae_paths, config=CausalConfig(), log=lambda _: None)
        results.append({"seed": seed, "hooks": hooks, "variables": {v: d["best"] for v, d in doc["variables"].items()},
                        "by_hook": {v: {h: {"das": r["das_best"], "iia": (r["features"] or {}).get("iia"),
                                            "isolation": (r["features"] or {}).get("isolation"),
                                            "size": len((r["features"] or {}).get("chosen", []))}
                                        for h, r in d["by_hook"].items()} for v, d in doc["variables"].items()},
                        "circuit": doc["circuit"]})
        print(f"seed {seed}: done ({', '.join(hooks)})", file=sys.stderr)
    summary = summarise(results, hooks)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "targets.json").write_text(json.dumps({"sae": {"variant": variant, "dict_size": dict_size,
                                                               "epochs": epochs}, "runs": results,
                                                       "summary": summary}, indent=1))
    print(table(summary, variant, dict_size))
    return 0


def summarise(results: list[dict], hooks: list[str]) -> dict:
    """Per variable at the hook where it is mediated (the highest mean DAS IIA at rank <= 16 among `hooks`): mean
    and spread (min, max) over seeds of DAS IIA, named IIA, set size, isolation; the circuit's share and size;
    which targets hold."""
    out = {}
    for v in results[0]["by_hook"]:
        hook = max(hooks, key=lambda h: np.mean([r["by_hook"][v][h]["das"]["iia"] or 0.0 for r in results]))
        rows = [r["by_hook"][v][hook] for r in results]
        def stat(key, rows=rows):
            xs = np.array([(x[key]["iia"] if key == "das" else x[key]) or 0.0 for x in rows], float)
            return {"mean": round(float(xs.mean()), 4), "min": round(float(xs.min()), 4), "max": round(float(xs.max()), 4)}
        out[v] = {"hook": hook, "das": stat("das"), "iia": stat("iia"), "size": stat("size"), "isolation": stat("isolation"),
                  "das_anywhere": max(max((h["das"]["iia"] or 0.0) for h in r["by_hook"][v].values()) for r in results)}
        out[v]["target_applies"] = out[v]["das_anywhere"] >= 0.95
        out[v]["target_met"] = bool(out[v]["iia"]["min"] >= 0.9 and out[v]["isolation"]["min"] >= 0.9)
    shares = np.array([r["circuit"]["share"] if r["circuit"] else 0.0 for r in results])
    sizes = np.array([r["circuit"]["size"] if r["circuit"] else 0 for r in results])
    out["_circuit"] = {"share_mean": round(float(shares.mean()), 4), "share_min": round(float(shares.min()), 4),
                       "size_mean": float(sizes.mean()), "met": bool(shares.min() >= 0.95)}
    return out


def table(summary: dict, variant: str, dict_size: int) -> str:
    def f(s):
        return f"{s['mean']:.3f} ({s['min']:.3f}-{s['max']:.3f})"
    lines = [f"SAE {variant} {dict_size}", "| variable | hook | DAS IIA (r <= 16) | named IIA | features | isolation | target |",
             "|---|---|---:|---:|---:|---:|---|"]
    for v, s in summary.items():
        if v.startswith("_"):
            continue
        target = ("met" if s["target_met"] else "not met") if s["target_applies"] else "n/a (DAS < 0.95)"
        lines.append(f"| {v} | {s['hook']} | {f(s['das'])} | {f(s['iia'])} | {s['size']['mean']:.1f} | {f(s['isolation'])} | {target} |")
    c = summary["_circuit"]
    lines.append(f"circuit: share {c['share_mean']:.3f} (min {c['share_min']:.3f}), {c['size_mean']:.0f} features, "
                 f"{'met' if c['met'] else 'not met'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
