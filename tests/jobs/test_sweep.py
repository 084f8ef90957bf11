"""`monosem sweep`: configurations of one shape train in one vmapped program, and each configuration's folder
holds what a standalone `train-sae` (SAE) or `monosem run` (MLP) with its settings writes, within float
rounding; the table, the plot and the bad-grid errors.

Tolerances, from measurements (CHANGELOG.md, issue 13). A vmapped step multiplies (C, B, D) by (C, D, F) in one batched
dot, whose sums XLA:CPU may order differently from the standalone (B, D) x (D, F) dot, so weights differ in the
last bits. Measured over all six architectures (1,200 x 37 rows, 48 latents, 4 configurations each, seeds and
a traced float varied): max |weight difference| 1.8e-7 after 3 epochs, 3.9e-7 after 20; explained variance
and MSE within 4.4e-8; L0 and dead fraction identical. SAE_WEIGHTS = 2e-6 is 5x the 20-epoch value and ~10 ulps
at the weights' scale (<= 1): a wrong hyperparameter, seed or batch order moves weights by >1e-3 after one epoch.

The MLP has one exception, measured on the tiny run (24 steps): every tensor within 7.2e-7 but the two biases
that feed a BatchNorm (and the running means that include them), which differ by up to 0.044. Those biases get
no gradient in exact arithmetic (BatchNorm subtracts the batch mean), so their computed gradients are rounding
noise, which Adam rescales to steps of about the learning rate in a direction set by that noise: any change in
summation order sends them on another random walk. The function barely notices: predictions on all rows within
1.6e-3 (targets 0..9), test MSE within 2e-5 relative. MLP_WEIGHTS = 1e-5 (14x) for the other tensors,
MLP_PREDICTIONS = 1e-2 (6x) on the outputs.

jumprelu's thresholds have one exception of their own. A threshold learns through a rectangle kernel
(straight-through): a pre-activation within bandwidth/2 of it counts, one just outside does not. Where the
rounding noise above puts a pre-activation on the other side of that edge, the threshold's gradient changes by
one row's count and Adam moves it by up to about the learning rate. Measured (jumprelu, l0_coeff 1e-2, seed 1,
lr 1e-3): after 3 epochs one threshold of 48 differs by 3.6e-5, every other weight and threshold within 3e-8.
JUMPRELU_THRESHOLDS: at most 2 thresholds beyond SAE_WEIGHTS, each within the learning rate.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import ACTIVATION_ROWS as ROWS
from jax_impl import saes
from jax_impl.cli import main
from jax_impl.evaluation import inference
from jax_impl.interop import bridge
from jax_impl.jobs.rundir import METRICS_FILE, MLP_PATH, SAE_FILE, load_run
from jax_impl.jobs.rundir import SAE_CONFIG_FILE as CONFIG_FILE
from jax_impl.jobs.sweep import run_sweep
from jax_impl.jobs.sweep_grid import parse_grid, sae_configurations
from jax_impl.jobs.train_sae import TrainSAEConfig, train_sae
from jax_impl.reports.sweep_page import SWEEP_CSV, SWEEP_HTML, SWEEP_JSON, pareto_front
from jax_impl.training.sae_trainer import SAETrainConfig

SAE_WEIGHTS = 2e-6
JUMPRELU_THRESHOLDS = 2
SAE_METRICS = 1e-6  # explained variance and MSE (measured 4.4e-8)
MLP_WEIGHTS = 1e-5
MLP_PREDICTIONS = 1e-2
PRE_BATCHNORM = {"layers.input.bias", "layers.hidden1.bias", "layers.bn1.running_mean", "layers.bn2.running_mean"}

DICT = 48
# Per architecture: a static field and a traced float with two values (so seeds and floats vary in one program).
GRIDS = {
    "relu-l1": {"l1_coeff": [1e-4, 1e-3]},
    "anthropic": {"resample_every": [1], "l1_coeff": [1e-4, 1e-3]},
    "topk": {"k": [6], "aux_coeff": [0.1], "lr": [1e-3, 3e-3]},  # aux_coeff: no latent dies in 3 epochs here
    "batchtopk": {"k": [6], "threshold_lr": [0.01, 0.1]},
    "matryoshka": {"k": [6], "groups": ["8:24:48"], "lr": [1e-3, 3e-3]},
    "jumprelu": {"bandwidth": [0.05], "l0_coeff": [1e-2], "lr": [1e-3, 3e-3]},  # l0_coeff barely moves 3 epochs
}
TRAIN = SAETrainConfig(epochs=3, batch_size=100, log_every=3)


def quiet(_line: str) -> None:
    pass


def _max_diff(a: dict, b: dict, skip: set[str] = frozenset()) -> float:
    assert list(a) == list(b)
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a if k not in skip), default=0.0)


# make test: three architectures whose steps differ most (a partial last batch; AuxK and batch-wide top-k
# under vmap; traced hyperparameters beside a static float); -m slow: the other three.
# make test keeps the seed's relu-l1 (a transcoder sweep is checked the same way in test_train_sae_transcoder.py);
# -m slow checks every architecture.
_SLOW_SWEEP = {"anthropic", "topk", "matryoshka", "batchtopk", "jumprelu"}


@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.slow) if v in _SLOW_SWEEP else v for v in GRIDS])
def test_each_configuration_is_what_train_sae_writes(variant, activations, tmp_path):
    grid = {"seed": [0, 1], **GRIDS[variant]}
    doc = run_sweep(tmp_path / "sweep", grid, activations=activations, variants=[variant], dict_size=DICT, train=TRAIN,
                    log=quiet)
    rows = doc["configurations"]
    assert len(rows) == 4 and len(doc["groups"]) == 1  # seeds and a float: one program
    # The diagonal (seed 0 with the first float, seed 1 with the second) against standalone train-sae runs.
    for row in (rows[0], rows[3]):
        c = row["config"]
        cfg = saes.get(variant).config(**{k: tuple(v) if isinstance(v, list) else v for k, v in c["config"].items()})
        alone = tmp_path / f"alone-{row['name']}"
        train_sae(activations, alone, TrainSAEConfig(variant=variant, dict_size=DICT, architecture=cfg, seed=c["seed"],
                                                     **c["training"]), log=quiet)
        ours = tmp_path / "sweep" / row["name"]
        assert sorted(p.name for p in ours.rglob("*")) == sorted(p.name for p in alone.rglob("*") if p.name != ".monosem.lock")
        assert json.loads((ours / CONFIG_FILE).read_text()) == json.loads((alone / CONFIG_FILE).read_text())
        a = torch.load(ours / SAE_FILE, weights_only=True)
        b = torch.load(alone / SAE_FILE, weights_only=True)
        if variant == "jumprelu":  # the kernel's edge (module docstring)
            off = (a["threshold"] - b["threshold"]).abs()
            assert int((off > SAE_WEIGHTS).sum()) <= JUMPRELU_THRESHOLDS and float(off.max()) <= c["training"]["lr"], off
        assert _max_diff(a, b, skip={"threshold"} if variant == "jumprelu" else set()) <= SAE_WEIGHTS, (row["name"], _max_diff(a, b))
        ma, mb = (json.loads((d / METRICS_FILE).read_text()) for d in (ours, alone))
        assert ma["l0"] == pytest.approx(mb["l0"], abs=2 / ROWS) and ma["dead_fraction"] == pytest.approx(mb["dead_fraction"], abs=1 / DICT)
        for key in ("explained_variance", "mse", "final_loss"):
            assert ma[key] == pytest.approx(mb[key], abs=SAE_METRICS), key
    # The two seeds and the two floats really trained different SAEs.
    w = [torch.load(tmp_path / "sweep" / r["name"] / SAE_FILE, weights_only=True) for r in rows]
    assert all(_max_diff(w[i], w[j]) > 1e-3 for i in range(4) for j in range(i))


def test_shapes_group_into_programs_and_the_table_and_plot_are_written(activations, tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", "--activations", str(activations), "--out", str(out), "--variant", "topk", "--grid", "k=4,6",
                 "--grid", "dict_size=32,48", "--grid", "seed=0..1", "--epochs", "1", "--batch-size", "100"]) == 0
    doc = json.loads((out / SWEEP_JSON).read_text())
    assert len(doc["configurations"]) == 8 and len(doc["groups"]) == 4  # (k, dict_size): four shapes, two seeds each
    assert all(len(g["configurations"]) == 2 for g in doc["groups"])
    names = [r["name"] for r in doc["configurations"]]
    assert names[0] == "000-k4-dict_size32-seed0" and names[-1] == "007-k6-dict_size48-seed1"
    for r in doc["configurations"]:
        assert (out / r["name"] / SAE_FILE).exists() and (out / r["name"] / "saelens" / "cfg.json").exists()
        assert r["l0"] == pytest.approx(r["k"], abs=1e-6) and 0 < r["explained_variance"] < 1
    csv_lines = (out / SWEEP_CSV).read_text().splitlines()
    header = csv_lines[0].split(",")
    assert len(csv_lines) == 9 and {"name", "k", "dict_size", "seed", "explained_variance", "l0", "dead_fraction", "mse",
                                    "seconds", "pareto"} <= set(header)
    assert csv_lines[1].split(",")[header.index("explained_variance")] == repr(doc["configurations"][0]["explained_variance"])
    assert doc["pareto"] == pareto_front(doc["configurations"]) and doc["pareto"]
    assert [s["n"] for s in doc["spread"]] == [2, 2, 2, 2]
    html = (out / SWEEP_HTML).read_text()
    assert "Pareto front" in html and "<script src=" not in html and len(html) > 1_000_000  # plotly.js inline


def test_pareto_front_keeps_only_undominated_points():
    rows = [{"name": "a", "l0": 4, "explained_variance": 0.5}, {"name": "b", "l0": 8, "explained_variance": 0.7},
            {"name": "c", "l0": 8, "explained_variance": 0.6}, {"name": "d", "l0": 16, "explained_variance": 0.7},
            {"name": "e", "l0": 2, "explained_variance": None}]
    assert pareto_front(rows) == ["a", "b"]


def test_mlp_seeds_train_together_and_the_run_seed_is_the_runs_mlp(tiny_run, tmp_path):
    run = load_run(tiny_run, log=quiet)
    doc = run_sweep(tmp_path / "mlp", {"seed": "6..8"}, stage="mlp", run_dir=tiny_run, log=quiet)
    assert [r["seed"] for r in doc["configurations"]] == [6, 7, 8] and len(doc["groups"]) == 1
    ours = bridge.load_mlp(tmp_path / "mlp" / "001-seed7" / MLP_PATH)  # the tiny run's seed is 7
    a = torch.load(tmp_path / "mlp" / "001-seed7" / MLP_PATH, weights_only=True)
    b = torch.load(tiny_run / MLP_PATH, weights_only=True)
    assert _max_diff(a, b, skip=PRE_BATCHNORM) <= MLP_WEIGHTS
    rows = run.rows()
    assert np.abs(inference.mlp_forward(ours, rows.inputs)[0] - inference.mlp_forward(run.mlp, rows.inputs)[0]).max() <= MLP_PREDICTIONS
    manifest = json.loads((tiny_run / "manifest.json").read_text())["metrics"]["mlp"]
    metrics = json.loads((tmp_path / "mlp" / "001-seed7" / METRICS_FILE).read_text())
    assert metrics["test"]["mse"] == pytest.approx(manifest["test"]["mse"], rel=1e-3)
    # Seeds differ, and the table shows their spread.
    others = [torch.load(tmp_path / "mlp" / n / MLP_PATH, weights_only=True) for n in ("000-seed6", "002-seed8")]
    assert all(_max_diff(o, a) > 1e-2 for o in others)
    spread = doc["spread"][0]
    assert spread["n"] == 3 and spread["metrics"]["test_mse"]["std"] > 0
    assert spread["metrics"]["test_mse"]["min"] <= metrics["test"]["mse"] <= spread["metrics"]["test_mse"]["max"]
    assert "test_exact_match" in (tmp_path / "mlp" / SWEEP_CSV).read_text().splitlines()[0]
    # each configuration's training curves (jax_impl.training.curves): the run's MLP's steps and lr, its losses
    points, run_points = ([json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
                          for folder in (tmp_path / "mlp" / "001-seed7", tiny_run / MLP_PATH.parent))
    assert [(p["step"], p["lr"]) for p in points] == [(p["step"], p["lr"]) for p in run_points]
    assert [p["loss"] for p in points] == pytest.approx([p["loss"] for p in run_points], rel=1e-4)
    assert points[-1]["epoch_loss"] == metrics["final_train_loss"]


def test_sae_sweep_on_a_run_directory_has_atlas_scores(tiny_run, tmp_path):
    doc = run_sweep(tmp_path / "sae", {"seed": [0, 1]}, run_dir=tiny_run, train=SAETrainConfig(epochs=1, batch_size=128),
                    log=quiet)
    for row in doc["configurations"]:
        assert row["variant"] == "relu-l1" and row["config"]["dict_size"] == 512  # the run's SAE settings
        assert 0 <= row["monosemantic_share"] <= 1 and row["live"] > 0
        assert (tmp_path / "sae" / row["name"] / "feature_atlas.json").exists()
    assert "monosemantic" in (tmp_path / "sae" / SWEEP_HTML).read_text()


@pytest.mark.parametrize("grid, message", [
    (["foo=1"], "--grid foo: unknown key; expected one of seed, dict_size"),
    (["l1_coeff=1e-3"], "--grid l1_coeff: not a field of --variant topk (it belongs to relu-l1, anthropic)"),
    (["k="], "--grid k=: no values"),
    (["k=4,,8"], "--grid k=4,,8: an empty value"),
    (["k=four"], "--grid k=four: expected integers (k is int), got 'four'"),
    (["lr=fast"], "--grid lr=fast: expected numbers"),
    (["seed=3..1"], "--grid seed=3..1: an empty range"),
    (["k=4", "k=8"], "--grid k: given twice"),
    (["k=64"], "--grid: configuration 000-k64 (topk): k must be in 1..48"),
    (["k"], "--grid 'k': expected KEY=V1,V2,..."),
])
def test_bad_grids_are_one_line_exit_2_nothing_written(grid, message, activations, tmp_path, capsys):
    argv = ["sweep", "--activations", str(activations), "--out", str(tmp_path / "out"), "--dict-size", str(DICT)]
    for g in grid:
        argv += ["--grid", g]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("monosem: error: ") and message in err, err
    assert not (tmp_path / "out").exists()


def test_mlp_stage_refuses_sae_keys_and_sae_flags(tiny_run, tmp_path, capsys):
    assert main(["sweep", "--run-dir", str(tiny_run), "--stage", "mlp", "--grid", "k=4", "--out", str(tmp_path / "o")]) == 2
    assert "--grid k: unknown key for --stage mlp (an SAE key: use --stage sae)" in capsys.readouterr().err
    assert main(["sweep", "--run-dir", str(tiny_run), "--stage", "mlp", "--variant", "topk", "--out", str(tmp_path / "o")]) == 2
    assert "--variant: SAE settings" in capsys.readouterr().err
    assert main(["sweep", "--activations", "x.npy", "--stage", "mlp", "--out", str(tmp_path / "o")]) == 2
    assert "--stage mlp trains the MLP of a run directory" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_grid_parsing_types_and_ranges():
    assert parse_grid(["seed=0..3", "lr=1e-3, 3e-3"]) == {"seed": ["0..3"], "lr": ["1e-3", "3e-3"]}
    configs = sae_configurations({"seed": ["0..2"], "groups": ["4:8:16", (8, 16)], "k": [4]}, variants=["matryoshka"], dict_size=16,
                                 train=TRAIN, seed=0)
    assert [(c.seed, c.cfg.groups) for c in configs] == [(s, g) for s in range(3) for g in ((4, 8, 16), (8, 16))]
    assert configs[1].name == "001-seed0-groups8:16-k4"


def test_a_second_sweep_into_the_same_folder_is_refused(activations, tmp_path, capsys):
    from jax_impl.files.locks import folder_lock

    with folder_lock(tmp_path / "out", flag="--out", what="output folder"):
        assert main(["sweep", "--activations", str(activations), "--out", str(tmp_path / "out"), "--dict-size", "8",
                     "--grid", "k=2", "--epochs", "1", "--batch-size", "100"]) == 2
    assert "another monosem process" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".monosem.lock"]


@pytest.mark.slow  # -m slow for make test's 10 minutes: MLP seed sweeps are test_mlp_seeds_train_together's
def test_online_mlp_seeds_are_what_fit_mlp_online_trains(tiny_run, tmp_path):
    import dataclasses

    import jax
    from flax import nnx

    from jax_impl.jobs.rundir import KEY_MLP_INIT, KEY_MLP_SHUFFLE
    from jax_impl.models.mlp import InterpretabilityMLP
    from jax_impl.training.online import fit_mlp_online

    run = load_run(tiny_run, log=quiet)
    doc = run_sweep(tmp_path / "online", {"seed": [7, 8], "data": ["online"]}, stage="mlp", run_dir=tiny_run, log=quiet)
    root = jax.random.key(7)
    alone = fit_mlp_online(
        InterpretabilityMLP(run.shape.input_dim, rngs=nnx.Rngs(jax.random.fold_in(root, KEY_MLP_INIT))),
        dataclasses.replace(run.config.mlp, data="online"), run.shape, n_train=len(run.splits["train"]),
        key=jax.random.fold_in(root, KEY_MLP_SHUFFLE), log=quiet,
    ).model
    ours = bridge.load_mlp(tmp_path / "online" / doc["configurations"][0]["name"] / MLP_PATH)
    rows = run.rows()
    assert np.abs(inference.mlp_forward(ours, rows.inputs)[0] - inference.mlp_forward(alone, rows.inputs)[0]).max() <= MLP_PREDICTIONS
    assert doc["configurations"][0]["test_mse"] == pytest.approx(inference.evaluate(alone, run.splits["test"])["mse"], rel=1e-3)


def test_a_diverging_configuration_is_recorded_and_the_others_are_written(activations, tmp_path):
    doc = run_sweep(tmp_path / "sw", {"lr": [1e-3, 1e12]}, activations=activations, variants=["relu-l1"], dict_size=DICT,
                    train=TRAIN, log=quiet)
    ok, bad = doc["configurations"]
    assert ok["status"] == "ok" and (tmp_path / "sw" / ok["name"] / SAE_FILE).exists()
    assert bad["status"].startswith(f"SAE ({bad['name']}) training diverged at epoch") and not (tmp_path / "sw" / bad["name"]).exists()
    written = json.loads((tmp_path / "sw" / SWEEP_JSON).read_text())
    assert doc["pareto"] == [ok["name"]] and written["configurations"][1]["status"] == bad["status"]
