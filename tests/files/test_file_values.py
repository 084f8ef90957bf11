"""Every value read from a JSON or .npz file is checked before use (issue 24, item 4): the cases the issue names,
one per reader, each a one-line UserError naming the file and the key (jax_impl.files.jsonfile and its callers).

The structure-aware fuzzing of the same readers is tests/files/test_fuzz_json.py; this file holds the named cases and
the parser's own properties. Everything here runs in this process on documents of a few KB.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

from jax_impl import saes
from jax_impl.cli import main
from jax_impl.data.synthetic import CONFIG_FILE, TRUTH_FILE, SyntheticConfig, load_synthetic, write_synthetic
from jax_impl.errors import UserError
from jax_impl.evaluation.atlas.document import ATLAS_JSON, feature_labels
from jax_impl.files import jsonfile
from jax_impl.interop import saelens
from jax_impl.jobs.causal import read_causal
from jax_impl.jobs.run_config import RunConfig
from jax_impl.jobs.rundir import MANIFEST, run_config
from jax_impl.training import checkpoints as ck

DEEP = 100_000  # json.loads raises RecursionError near 1000 levels


def one_line(error: BaseException, *fragments: str) -> str:
    text = str(error)
    assert "\n" not in text, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


def deep_list(levels: int = DEEP) -> str:
    return "[" * levels + "]" * levels


# --------------------------------------------------------------------------- the parser


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize("document", [
    [], {}, 1, "x", [[[]]], {"a": [{"b": "]]]"}]}, ["\\", "\\\"[", "[\\\\", {"\"{": "\\\\\\\"{"}], ["é{", "\u2028["],
])
def test_nesting_depth_counts_brackets_outside_strings(document, monkeypatch):
    text = json.dumps(document, ensure_ascii=False).encode()
    assert jsonfile.nesting_depth(text) == _depth(document)
    monkeypatch.setattr(jsonfile, "_SCAN_CHUNK", 3)  # chunk boundaries inside strings, escapes and runs
    assert jsonfile.nesting_depth(text) == _depth(document)


@pytest.mark.parametrize(("text", "why"), [
    (deep_list(), "nested deeper than 64 levels"),
    ('{"a":' * DEEP + "1" + "}" * DEEP, "nested deeper than 64 levels"),
    (deep_list(65), "nested deeper than 64 levels"),
    ("[NaN]", "NaN is not a JSON number"),
    ('{"x": Infinity}', "Infinity is not a JSON number"),
    ("[-Infinity]", "-Infinity is not a JSON number"),
    ("[1e400]", "too large for a float"),
    ("[" + "9" * 400 + ".5]", "too large for a float"),
    ("[1" + "0" * 5000 + "]", "an integer of more than 4300 digits"),
    ('{"a": 1', "Expecting"),
])
def test_the_parser_refuses_with_one_line(text, why):
    with pytest.raises(UserError) as e:
        jsonfile.parse(text, "doc.json")
    one_line(e.value, "doc.json: not readable JSON (", why)


def test_the_parser_reads_what_json_reads(tmp_path):
    document = {"a": [1, 2.5, -3e-7, None, True, "[{\\\"é"], "b": {"c": [[[]]] * 3}, "big": 2**63 - 1, "e": 1e300}
    text = json.dumps(document, indent=2)
    assert jsonfile.parse(text, "x").value == json.loads(text) == document
    assert jsonfile.parse(deep_list(64), "x").value == json.loads(deep_list(64))
    (tmp_path / "a.json").write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match=r"a.json: not readable JSON \(not UTF-8 text: byte 0xff at offset 0\)"):
        jsonfile.read(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(" " * 100 + "1")
    with pytest.raises(UserError, match=r"b.json: not readable JSON \(larger than 64 bytes"):
        jsonfile.read(tmp_path / "b.json", max_bytes=64)


def test_typed_accessors_name_the_key_and_what_was_expected():
    doc = jsonfile.parse('{"a": {"b": "false", "n": 10, "f": 1.5, "big": 1' + "0" * 18 + ', "t": true, "s": "x"}}',
                         "f.json", hint="remove it")
    a = doc["a"]
    with pytest.raises(UserError) as e:
        a["b"].boolean()
    assert str(e.value) == "f.json: key 'a.b' is 'false', expected true or false; remove it"
    with pytest.raises(UserError, match=r"key 'a.t' is true, expected an integer"):
        a["t"].integer()  # a bool is not an int
    with pytest.raises(UserError, match=r"key 'a.big' is 1000000000000000000, expected a positive integer \(at most 9\)"):
        a["big"].integer(1, 9)
    with pytest.raises(UserError, match=r"key 'x' is an integer of 401 digits, expected a finite number"):
        jsonfile.Node(10**400, "f.json", "x").number()
    with pytest.raises(UserError) as e:  # no value read here is beyond 64 bits: the parser names the first one
        jsonfile.parse('{"a": [1, {"b": 9223372036854775808}]}', "f.json")
    assert str(e.value) == "f.json: key 'a[1].b' is 9223372036854775808, expected a number within 64 bits"
    with pytest.raises(UserError, match=r"key 'a.f' is 1.5, expected an integer"):
        a["f"].integer()
    with pytest.raises(UserError, match=r"key 'a.missing' is missing, expected a string"):
        a["missing"].string()
    with pytest.raises(UserError, match=r"key 'a.s' is 'x', expected one of 'y', 'z'"):
        a["s"].string(("y", "z"))
    with pytest.raises(UserError, match=r"key 'a.n' is 10, expected a finite number in \[0, 1\]"):
        a["n"].number(0, 1)
    assert (a["n"].integer(1, 10), a["f"].number(above=1), a["t"].boolean(), a["s"].string(("x",))) == (10, 1.5, True, "x")
    assert a.get("absent", None).number(null=True) is None


# --------------------------------------------------------------------------- a run's manifest


@pytest.fixture
def run_dir(tmp_path) -> Path:
    (tmp_path / MANIFEST).write_text(json.dumps({"config": RunConfig().to_dict(), "stages": {}, "metrics": {}}))
    return tmp_path


def _set_manifest(run_dir: Path, **config) -> None:
    manifest = json.loads((run_dir / MANIFEST).read_text())
    manifest["config"].update(config)
    (run_dir / MANIFEST).write_text(json.dumps(manifest))


def test_a_valid_manifest_reads_back_as_its_config(run_dir):
    assert run_config(run_dir) == RunConfig()
    _set_manifest(run_dir, seed=2**63 - 1, hook="layer3")
    assert run_config(run_dir).seed == 2**63 - 1  # what the --seed flag allows


@pytest.mark.parametrize(("change", "fragment"), [
    ({"hook": "layer9"}, "key 'config.hook' is 'layer9', expected one of 'layer1', 'layer2', 'layer3'"),
    ({"seed": 2**64}, "key 'config.seed' is 18446744073709551616, expected a number within 64 bits"),
    ({"seed": -1}, "key 'config.seed' is -1, expected an integer in 0.."),
    ({"seed": 10**400}, "key 'config.seed' is an integer of 401 digits, expected a number within 64 bits"),
    ({"mlp": {**RunConfig().to_dict()["mlp"], "max_lr": 10**400}}, "key 'config.mlp.max_lr' is an integer of 401 digits"),
    ({"recipe": "fast"}, "key 'config.recipe' is 'fast', expected one of 'seed', 'strong'"),
    ({"data": {**RunConfig().to_dict()["data"], "n_train": 0}}, "key 'config.data.n_train' is 0, expected a positive integer"),
    ({"data": {**RunConfig().to_dict()["data"], "x_dim": 10**12}}, "key 'config.data.x_dim' is 1000000000000"),
    ({"mlp": {**RunConfig().to_dict()["mlp"], "pct_start": 1.0}}, "key 'config.mlp.pct_start' is 1.0, expected a finite number in (0, 1)"),
    ({"sae": {**RunConfig().to_dict()["sae"], "dict_size": 10**400}}, "key 'config.sae.dict_size' is an integer of 401 digits"),
    ({"causal": {**RunConfig().to_dict()["causal"], "ranks": [0]}}, "config.causal: --causal-ranks must be positive"),
])
def test_a_manifest_value_out_of_range_is_one_line(run_dir, capsys, change, fragment):
    _set_manifest(run_dir, **change)
    assert main(["probe", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"monosem: error: {run_dir / MANIFEST}: "), err
    assert fragment in err and err.rstrip().endswith("remove it to start the run over"), err


@pytest.mark.parametrize("text", [
    '{"config": ' + deep_list() + "}",
    '{"config": {"seed": NaN}}',
    '{"config": {}, "stages": {"data": {"seconds": "1"}}}',
    '{"config": {}, "metrics": []}',
])
def test_a_damaged_manifest_is_one_line(run_dir, capsys, text):
    (run_dir / MANIFEST).write_text(text)
    assert main(["probe", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run_dir / MANIFEST}: " in err and "Traceback" not in err, err


# --------------------------------------------------------------------------- a SAELens folder


def _saelens_folder(tmp_path: Path, variant: str, ours: bool = False) -> Path:
    # the shapes and key of tests/files/test_fuzz_json.py's folders: the same eager programs, compiled once
    arch = saes.get(variant)
    sae = saes.create(variant, 6, 16, arch.config(**({"k": 2} if "k" in arch.config.__dataclass_fields__ else {})),
                      key=jax.random.key(1))
    folder = saelens.save_saelens(sae, tmp_path / variant)
    if not ours:  # a plain SAELens file: what cfg.json says is all there is
        cfg = json.loads((folder / saelens.CFG_FILE).read_text())
        del cfg["metadata"]["monosem"]
        (folder / saelens.CFG_FILE).write_text(json.dumps(cfg))
    return folder


def _edit_cfg(folder: Path, **changes) -> Path:
    cfg = json.loads((folder / saelens.CFG_FILE).read_text())
    cfg.update(changes)
    (folder / saelens.CFG_FILE).write_text(json.dumps(cfg))
    return folder / saelens.CFG_FILE


def test_apply_b_dec_to_input_must_be_a_real_boolean(tmp_path):
    folder = _saelens_folder(tmp_path, "relu-l1")  # untied: SAELens "standard" with apply_b_dec_to_input false
    assert saelens.load_saelens(folder, input_dim=None).arch.name == "relu-l1"
    path = _edit_cfg(folder, apply_b_dec_to_input="false")  # bool("false") is True: anthropic's tied form
    with pytest.raises(UserError) as e:
        saelens.load_saelens(folder, input_dim=None)
    assert str(e.value) == f"{path}: key 'apply_b_dec_to_input' is 'false', expected true or false"


@pytest.mark.parametrize(("change", "fragment"), [
    ({"d_sae": 10**400}, "key 'd_sae' is an integer of 401 digits, expected a number within 64 bits"),
    ({"d_sae": 2**31}, "key 'd_sae' is 2147483648, expected a positive integer (at most 2147483647)"),
    ({"d_in": True}, "key 'd_in' is true, expected a positive integer"),
    ({"rescale_acts_by_decoder_norm": "no"}, "key 'rescale_acts_by_decoder_norm' is 'no', expected true or false"),
    ({"k": 2.5}, "key 'k' is 2.5, expected a whole number of features"),
    ({"k": True}, "key 'k' is true, expected a finite number"),
    ({"architecture": ["topk"]}, "key 'architecture' is a list of 1 item, expected a string"),
    ({"metadata": {"monosem": {"architecture": {}, "config": {}}}}, "key 'metadata.monosem.architecture' is an empty object"),
    ({"d_sae": 2**31 - 1}, "tensor 'b_enc' has shape (16,), expected (2147483647,)"),  # nothing of that size is made
])
def test_a_saelens_cfg_value_of_the_wrong_type_or_range_is_one_line(tmp_path, change, fragment):
    folder = _saelens_folder(tmp_path, "topk")
    _edit_cfg(folder, **change)
    with pytest.raises(UserError) as e:
        saelens.load_saelens(folder, input_dim=None)
    one_line(e.value, fragment)


def test_our_metadata_config_is_typed_as_the_architecture_config(tmp_path):
    folder = _saelens_folder(tmp_path, "topk", ours=True)
    assert saelens.load_saelens(folder, input_dim=None).cfg.k == 2
    cfg = json.loads((folder / saelens.CFG_FILE).read_text())
    cfg["metadata"]["monosem"]["config"]["k"] = True  # passed `1 <= k <= d_sae` before
    (folder / saelens.CFG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(UserError) as e:
        saelens.load_saelens(folder, input_dim=None)
    one_line(e.value, "metadata.monosem.config.k holds a boolean True, expected an integer")


def test_a_negative_saelens_threshold_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _saelens_folder(tmp_path, "jumprelu")
    tensors = load_file(folder / saelens.WEIGHTS_FILE)
    tensors["threshold"][3] = -0.5  # jump(pre, -0.5) would pass negative pre-activations as features
    save_file(tensors, folder / saelens.WEIGHTS_FILE)
    with pytest.raises(UserError) as e:
        saelens.load_saelens(folder, input_dim=None)
    one_line(e.value, f"{folder / saelens.WEIGHTS_FILE}: tensor 'threshold' holds -0.5, expected thresholds >= 0")


def test_a_deeply_nested_saelens_cfg_is_one_line(tmp_path):
    folder = _saelens_folder(tmp_path, "topk")
    path = _edit_cfg(folder, metadata={"x": 0})
    path.write_text(path.read_text().replace('{"x": 0}', deep_list()))
    with pytest.raises(UserError) as e:
        saelens.load_saelens(folder, input_dim=None)
    one_line(e.value, f"{path}: not readable JSON (nested deeper than 64 levels)")


# --------------------------------------------------------------------------- a synthetic set

SMALL = SyntheticConfig(n_features=10, dim=6, rows=120, parents=2, children_per_parent=2, correlation_rank=2)


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory) -> Path:
    return write_synthetic(SMALL, tmp_path_factory.mktemp("synthetic") / "set")


@pytest.fixture
def synthetic_copy(synthetic_set, tmp_path) -> Path:
    copy = tmp_path / "set"
    copy.mkdir()
    for f in synthetic_set.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    return copy


def _write_truth(folder: Path, **arrays) -> Path:
    path = folder / TRUTH_FILE
    with np.load(path) as z:
        current = {k: z[k] for k in z.files}
    current.update(arrays)
    np.savez(path, **{k: v for k, v in current.items() if v is not None})
    return path


def test_a_synthetic_set_reads_back(synthetic_copy):
    x, truth, cfg = load_synthetic(synthetic_copy)
    assert cfg == SMALL and x.shape == (120, 6) and truth.directions.shape == (10, 6)
    assert np.all(np.diff(truth.row) >= 0) and truth.feature.max() < 10


def _truth(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / TRUTH_FILE) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize(("edit", "fragment"), [
    (lambda t: {"feature": np.where(np.arange(t["feature"].size) == 4, 10, t["feature"]).astype(np.int32)},
     "key 'feature' holds 10 at flat index 4, expected feature ids in 0..9"),
    (lambda t: {"parent": np.full(10, 99, np.int32)}, "key 'parent' holds 99 at flat index 0, expected -1 (no parent)"),
    (lambda t: {"parent": np.arange(10, dtype=np.int32)}, "key 'parent' holds 0 at flat index 0"),  # its own parent
    (lambda t: {"row": t["row"][::-1].copy()}, "expected row numbers in ascending order"),
    (lambda t: {"row": t["row"] + 1000}, "key 'row' holds 1000 at flat index 0, expected row numbers in 0..119"),
    (lambda t: {"value": np.where(np.arange(t["value"].size) == 2, np.nan, t["value"]).astype(np.float32)},
     "key 'value' holds nan at flat index 2, expected positive activations"),
    (lambda t: {"directions": np.full((10, 6), np.inf, np.float32)}, "key 'directions' holds inf at flat index 0"),
    (lambda t: {"firing_probability": np.full(10, 2.0, np.float32)}, "key 'firing_probability' holds 2.0"),
    (lambda t: {"row": t["row"].astype(np.float64)}, "key 'row' has dtype float64, expected int64"),
    (lambda t: {"directions": t["directions"][:4]}, "key 'directions' has shape (4, 6), expected (10, 6)"),
    (lambda t: {"value": t["value"][:3]}, "key 'value' has shape (3,), expected"),
    (lambda t: {"row": t["row"].reshape(1, -1)}, "key 'row' has shape (1,"),
    (lambda t: {"parent": None}, "expected exactly ['directions', 'feature', 'firing_probability', 'parent', 'row', 'value']"),
])
def test_a_tampered_ground_truth_is_one_line(synthetic_copy, edit, fragment):
    path = _write_truth(synthetic_copy, **edit(_truth(synthetic_copy)))
    with pytest.raises(UserError) as e:
        load_synthetic(synthetic_copy)
    one_line(e.value, f"{path}: ", fragment)


def test_a_ground_truth_header_claiming_more_than_the_archive_holds_is_refused_before_allocating(synthetic_copy):
    truth = _truth(synthetic_copy)
    path = synthetic_copy / TRUTH_FILE
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in truth.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            data = buffer.getvalue()
            if name == "row":  # 10^13 rows of int64: 80 TB
                data = data.replace(f"({array.size},)".encode(), b"(10000000000000,)")
            archive.writestr(f"{name}.npy", data)
    with pytest.raises(UserError) as e:
        load_synthetic(synthetic_copy)
    one_line(e.value, f"{path}: key 'row' claims shape (10000000000000,)")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in truth.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{name}.npy", buffer.getvalue())
    with pytest.raises(UserError, match="is compressed or larger than the archive"):
        load_synthetic(synthetic_copy)


@pytest.mark.parametrize(("text", "fragment"), [
    (lambda cfg: json.dumps({**cfg, "rows": "X"}).replace('"X"', deep_list()), "not a synthetic config (nested deeper"),
    (lambda cfg: json.dumps({**cfg, "rows": True}), "config.rows holds a boolean True, expected an integer"),
    (lambda cfg: json.dumps({**cfg, "n_features": 10.5}), "config.n_features holds a number 10.5, expected an integer"),
    (lambda cfg: json.dumps({**cfg, "seed": 10**400}), "key 'seed' is an integer of 401 digits"),
    (lambda cfg: json.dumps({**cfg, "max_prob": "X"}).replace('"X"', "NaN"), "NaN is not a JSON number"),
    (lambda cfg: json.dumps({**cfg, "dim": 7}), "activations.npy: activations of shape (120, 6), expected (120, 7)"),
])
def test_a_damaged_synthetic_config_is_one_line(synthetic_copy, text, fragment):
    path = synthetic_copy / CONFIG_FILE
    path.write_text(text(json.loads(path.read_text())))
    with pytest.raises(UserError) as e:
        load_synthetic(synthetic_copy)
    one_line(e.value, fragment)


# --------------------------------------------------------------------------- other JSON readers


def test_checkpoint_metadata_too_deep_is_a_damaged_checkpoint(tmp_path):
    path = tmp_path / "ckpt_000001"
    ck.write_step(path, {"x": np.zeros(2, np.float32)}, {})
    (path / ck.META / "metadata").write_text(deep_list())
    ck.seal_step(path, path)
    with pytest.raises(ck.CheckpointError) as e:
        ck.read_step(path)
    one_line(e.value, f"{path}: not a readable monosem checkpoint", "nested deeper than 64 levels")


CAUSAL = {
    "format": "monosem-causal-map/1",
    "hooks": {"layer2": {"sae": "sae/sae_model.pth", "circuit": None,
                         "features": {"3": {"label": "a[p1]<b[p2]", "f1": 0.66, "density": 0.9, "top": []}}}},
    "variables": {"T": {"best": {"hook": "layer2", "features": [3], "iia": 0.2},
                        "by_hook": {"layer2": {"features": {"chosen": [3, 5], "effects": [0.02, None]}}}}},
    "circuit": {"hook": "layer2", "variables": ["T"], "features": [3], "size": 1, "share": 0.5, "effects": [0.016],
                "rows": 64},
}


@pytest.mark.parametrize(("path", "value", "fragment"), [
    (("circuit", "share"), "0.5", "key 'circuit.share' is '0.5', expected a finite number in [0, 1]"),
    (("circuit", "variables"), ["P9"], "key 'variables.P9' is missing, expected an object"),
    (("circuit", "features"), [3.5], "key 'circuit.features[0]' is 3.5, expected an integer in 0.."),
    (("hooks", "layer2", "features", "3", "f1"), None, "key 'hooks.layer2.features.3.f1' is null, expected a finite number"),
    (("variables", "T", "by_hook", "layer2", "features", "effects"), ["x"], "features.effects[0]' is 'x'"),
])
def test_a_causal_map_for_the_reports_is_checked(tmp_path, path, value, fragment):
    from jax_impl.reports.circuit_trace import causal_sankey_view

    file = tmp_path / "causal.json"
    file.write_text(json.dumps(CAUSAL))
    assert causal_sankey_view(read_causal(file)) is not None
    doc = json.loads(json.dumps(CAUSAL))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    file.write_text(json.dumps(doc))
    with pytest.raises(UserError) as e:
        read_causal(file)
    one_line(e.value, f"{file}: ", fragment, "rerun `monosem causal` or remove it")
    file.write_text(json.dumps({"circuit": json.loads(deep_list(200))}))
    with pytest.raises(UserError, match="nested deeper than 64 levels"):
        read_causal(file)


def test_an_atlas_read_for_its_labels_is_checked(tmp_path):
    path = tmp_path / ATLAS_JSON
    features = [{"id": 4, "label": "p1=2", "f1": 0.95, "monosemantic": True},
                {"id": 7, "label": "t=1", "f1": None, "monosemantic": False}]
    path.write_text(json.dumps({"features": features}))
    assert feature_labels(path) == {4: "p1=2"} and feature_labels(path, min_f1=0.5) == {4: "p1=2"}
    for key, value, fragment in [("monosemantic", "yes", "key 'features[0].monosemantic' is 'yes', expected true or false"),
                                 ("id", -1, "key 'features[0].id' is -1, expected an integer in 0.."),
                                 ("f1", math.pi, "key 'features[0].f1' is 3.14159")]:
        path.write_text(json.dumps({"features": [{**features[0], key: value}]}))
        with pytest.raises(UserError) as e:
            feature_labels(path)
        one_line(e.value, str(path), fragment)
