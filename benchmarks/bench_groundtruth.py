"""Ground-truth recovery: every SAE architecture of the family, ours vs SAELens' own trainers, same data.

    .venv/bin/python benchmarks/bench_groundtruth.py [--quick] [--rows N] [--epochs E] [--out benchmarks/groundtruth]

One synthetic dataset (jax_impl.data.synthetic, default config: 256 planted features in 64 dimensions, Zipf
firing, varying magnitudes, correlated firing, 8 parents with 3 children each) is written once. For each
architecture and each sparsity setting, ours trains with `train_sae` (the `monosem train-sae` code) on its
`.npy` and SAELens' trainer (`sae_lens.SAETrainer`, the one `sae_lens.synthetic.train_toy_sae` uses, with
the architecture's defaults) on the same rows in the same shuffled epochs, batch size, step count, learning
rate and dictionary size, in this process on this machine. Both are scored by jax_impl.evaluation.groundtruth (MCC, F1
of matched latents, absorption, EV, L0, dead) and timed, training only (construction to the last step).

Writes OUT.json, OUT.md (the table) and OUT.html (plotly, offline: MCC vs L0 per architecture and library).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # SAELens' progress bar, one line per 100 steps: the table says it all
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jax_impl import saes
from jax_impl.data.synthetic import ACTIVATIONS_FILE, SyntheticConfig, load_synthetic, write_synthetic  # noqa: E402
from jax_impl.evaluation import groundtruth  # noqa: E402
from jax_impl.interop.saelens import load_sae  # noqa: E402
from jax_impl.jobs.rundir import SAE_FILE  # noqa: E402
from jax_impl.jobs.train_sae import TrainSAEConfig, train_sae  # noqa: E402
from jax_impl.precision import highest_precision  # noqa: E402
from jax_impl.training.sae_trainer import SAETrainConfig  # noqa: E402

# (architecture, our config fields, SAELens architecture, its config fields): one row per sparsity setting.
# k-based architectures match L0 by construction; the penalty ones by their coefficient (the achieved L0 of
# each is in the table). SAELens' reconstruction loss is the squared error summed over the D dimensions,
# ours its mean: the same objective has SAELens' coefficient = ours x D, which PER_DIM marks.
PER_DIM = "per_dim"
SETTINGS: list[tuple[str, dict, str, dict]] = [
    *[("topk", {"k": k}, "topk", {"k": k}) for k in (3, 5, 8)],
    *[("batchtopk", {"k": k}, "batchtopk", {"k": k}) for k in (3, 5, 8)],
    *[("matryoshka", {"k": k}, "matryoshka_batchtopk", {"k": k}) for k in (3, 5, 8)],
    *[("jumprelu", {"l0_coeff": c}, "jumprelu", {"l0_coefficient": (c, PER_DIM)}) for c in (6e-4, 1e-3, 3e-3)],
    *[("anthropic", {"l1_coeff": c}, "standard", {"l1_coefficient": (c, PER_DIM)}) for c in (3e-3, 1e-2, 3e-2)],
]
QUICK = [s for s in SETTINGS if s[0] in ("topk", "batchtopk") and s[1].get("k") == 5]


def _saelens_sae(arch: str, fields: dict, d_in: int, d_sae: int, widths: tuple[int, ...]):
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )

    classes = {
        "topk": (TopKTrainingSAE, TopKTrainingSAEConfig),
        "batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig),
        "matryoshka_batchtopk": (MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig),
        "jumprelu": (JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig),
        "standard": (StandardTrainingSAE, StandardTrainingSAEConfig),
    }
    sae_class, cfg_class = classes[arch]
    fields = {name: v[0] * d_in if isinstance(v, tuple) and v[1] == PER_DIM else v for name, v in fields.items()}
    extra = {"matryoshka_widths": list(widths)} if arch == "matryoshka_batchtopk" else {}
    return sae_class(cfg_class(d_in=d_in, d_sae=d_sae, **fields, **extra))


def train_saelens(arch: str, fields: dict, x: np.ndarray, d_sae: int, train: SAETrainConfig, seed: int,
                  widths: tuple[int, ...] = ()) -> tuple[object, float]:
    """SAELens' SAETrainer on rows x (N, D): `train.epochs` shuffled passes in batches of train.batch_size
    (the last, shorter one dropped, as ours), Adam at train.lr. Returns (the SAE, training seconds)."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(seed)
    started = time.perf_counter()
    sae = _saelens_sae(arch, fields, x.shape[1], d_sae, widths)
    rows = torch.from_numpy(np.ascontiguousarray(x))
    steps_per_epoch = len(rows) // train.batch_size
    generator = torch.Generator().manual_seed(seed)

    def batches():
        for _ in range(train.epochs):
            order = torch.randperm(len(rows), generator=generator)
            for s in range(steps_per_epoch):
                yield rows[order[s * train.batch_size:(s + 1) * train.batch_size]]

    cfg = SAETrainerConfig(
        total_training_samples=train.epochs * steps_per_epoch * train.batch_size,
        train_batch_size_samples=train.batch_size, lr=train.lr, lr_end=train.lr, device="cpu",
        save_final_checkpoint=False, checkpoint_path=None, n_checkpoints=0,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
    )
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches(), save_checkpoint_fn=lambda *a, **k: None)
    trainer.fit()
    return sae, time.perf_counter() - started


def score_saelens(sae, x: np.ndarray, truth) -> dict:
    """The same scores as ours, from SAELens' encode/decode (its inference path)."""
    sae.eval()
    scorer = groundtruth.Scorer(truth, sae.W_dec.detach().numpy())
    with torch.no_grad():
        for start in range(0, len(x), groundtruth.DEFAULT_CHUNK_ROWS):
            rows = torch.from_numpy(np.ascontiguousarray(x[start:start + groundtruth.DEFAULT_CHUNK_ROWS]))
            features = sae.encode(rows)
            scorer.add(start, rows.numpy(), features.numpy(), sae.decode(features).numpy())
    return scorer.result()


@highest_precision  # float32 matmuls at full precision, as `monosem` computes them
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="topk and batchtopk at k = 5 only")
    ap.add_argument("--rows", type=int, default=SyntheticConfig.rows)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dict-size", type=int, default=SyntheticConfig.n_features)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", help="comma-separated architectures of ours to run")
    ap.add_argument("--no-saelens", action="store_true", help="ours only")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "groundtruth")
    ap.add_argument("--replot", action="store_true", help="only redraw OUT.html from OUT.json")
    args = ap.parse_args(argv)
    if args.replot:
        _plot(json.loads(args.out.with_suffix(".json").read_text())["results"], args.out.with_suffix(".html"))
        return 0

    torch.set_num_threads(torch.get_num_threads())
    settings = QUICK if args.quick else SETTINGS
    if args.only:
        settings = [s for s in settings if s[0] in args.only.split(",")]
    data_cfg = SyntheticConfig(rows=args.rows, seed=args.seed)
    train = SAETrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, log_every=args.epochs)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = write_synthetic(data_cfg, Path(tmp) / "data")
        x, truth, _ = load_synthetic(data_dir)
        x = np.asarray(x)
        for ours_arch, ours_fields, lens_arch, lens_fields in settings:
            arch = saes.get(ours_arch)
            cfg = arch.config(**ours_fields)
            started = time.perf_counter()
            config = TrainSAEConfig(variant=ours_arch, dict_size=args.dict_size, architecture=cfg, seed=args.seed,
                                    **dataclasses.asdict(train))
            metrics = train_sae(data_dir / ACTIVATIONS_FILE, Path(tmp) / ours_arch, config, log=lambda line: None)
            seconds = time.perf_counter() - started
            model = load_sae(Path(tmp) / ours_arch / SAE_FILE, input_dim=x.shape[1])
            row = {"architecture": ours_arch, "config": ours_fields, "library": "ours",
                   "train_seconds": metrics["train_seconds"], "wall_seconds": round(seconds, 3)}
            row |= groundtruth.score_sae(model, x, truth)
            results.append(row)
            print(_line(row), flush=True)
            if args.no_saelens:
                continue
            widths = tuple(model.cfg.groups) if ours_arch == "matryoshka" else ()  # prefix ends, as ours
            sae, lens_seconds = train_saelens(lens_arch, lens_fields, x, args.dict_size, train, args.seed, widths)
            shown = {n: v[0] * x.shape[1] if isinstance(v, tuple) else v for n, v in lens_fields.items()}
            row = {"architecture": ours_arch, "config": shown, "library": f"sae_lens:{lens_arch}",
                   "train_seconds": round(lens_seconds, 3), "wall_seconds": round(lens_seconds, 3)}
            row |= score_saelens(sae, x, truth)
            results.append(row)
            print(_line(row), flush=True)
    meta = {
        "command": "benchmarks/bench_groundtruth.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch threads {torch.get_num_threads()}",
        "data": dataclasses.asdict(data_cfg), "training": dataclasses.asdict(train), "dict_size": args.dict_size,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    args.out.with_suffix(".md").write_text(_table(meta, results))
    _plot(results, args.out.with_suffix(".html"))
    print(f"wrote {args.out.with_suffix('.json')}, {args.out.with_suffix('.md')} and {args.out.with_suffix('.html')}")
    return 0


def _line(r: dict) -> str:
    return (f"{r['architecture']:<11} {r['library']:<30} {json.dumps(r['config']):<24} MCC {r['mcc']:.3f} "
            f"F1 {r['f1']:.3f} absorption {r['absorption']:.3f} EV {r['explained_variance']:.3f} "
            f"L0 {r['l0']:.2f} dead {r['dead_fraction']:.1%} {r['train_seconds']:.1f} s")


def _plot(results: list[dict], path: Path) -> None:
    """MCC vs L0, one panel per architecture, ours vs SAELens; offline HTML (plotly.js inlined)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    archs = list(dict.fromkeys(r["architecture"] for r in results))
    fig = make_subplots(rows=1, cols=len(archs), subplot_titles=archs, shared_yaxes=True)
    for col, arch in enumerate(archs, start=1):
        for library, colour in (("ours", "#1f77b4"), ("sae_lens", "#ff7f0e")):
            rows = sorted((r for r in results if r["architecture"] == arch and r["library"].startswith(library)),
                          key=lambda r: r["l0"])
            fig.add_trace(go.Scatter(x=[r["l0"] for r in rows], y=[r["mcc"] for r in rows], mode="lines+markers",
                                     name=library, legendgroup=library, showlegend=col == 1,
                                     line={"color": colour}, text=[json.dumps(r["config"]) for r in rows]),
                          row=1, col=col)
        fig.update_xaxes(title_text="L0", type="log", row=1, col=col)
    fig.update_yaxes(title_text="MCC (true vs learned directions)", row=1, col=1)
    fig.update_layout(title="Ground-truth recovery at matched L0: ours vs SAELens' trainers", height=380,
                      width=260 * len(archs) + 120, margin={"t": 70})
    fig.write_html(path, include_plotlyjs=True, full_html=True, config={"displayModeBar": False})


def _table(meta: dict, results: list[dict]) -> str:
    head = ("| architecture | library | config | MCC | mean max cos | F1 | F1 >= 0.9 | absorption | EV | L0 | dead | "
            "train s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['architecture']} | {r['library']} | `{json.dumps(r['config'])}` | {r['mcc']:.3f} | {r['mean_max_cos']:.3f} | "
        f"{r['f1']:.3f} | {r['f1_at_least_0.9']:.0%} | {r['absorption']:.3f} | {r['explained_variance']:.3f} | "
        f"{r['l0']:.2f} | {r['dead_fraction']:.1%} | {r['train_seconds']:.1f} |\n" for r in results)
    return f"Command: `{meta['command']}`; {meta['machine']}; true L0 {results[0]['true_l0']:.2f}.\n\n" + head + body


if __name__ == "__main__":
    raise SystemExit(main())
