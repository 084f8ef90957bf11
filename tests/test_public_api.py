"""The public API (jax_impl/__init__.py): `import jax_impl` is light and changes no JAX setting, every public name
resolves to its home module and has a docstring, type checkers see the same names, the version has one home, and
the functions that compute trace their matmuls at the highest precision (jax_impl.precision) only for their call.
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
import tomllib
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jax_impl
from conftest import REPO
from jax_impl import cli
from jax_impl.evaluation import inference
from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.precision import MARK, MATMUL_PRECISION, highest_precision
from jax_impl.task.pointer import Split

INIT = REPO / "jax_impl" / "__init__.py"
# The public functions that run JAX computations: each sets the precision for its call.
COMPUTING = ("run_pipeline", "train_sae", "run_sweep", "evaluate", "probe", "build_atlas", "atlas_from_models",
             "causal_map", "dashboard")
USER_PRECISION = "tensorfloat32"  # a user's own setting, which a public function must leave as it found it
DOT = re.compile(r"stablehlo\.dot_general .*precision = \[(\w+), (\w+)\]")


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_imports_neither_jax_nor_torch():
    out = _python("import sys, jax_impl; print(jax_impl.__version__); "
                  "heavy = {'jax', 'jaxlib', 'flax', 'torch', 'numpy'}; "
                  "print(*sorted({m.split('.')[0] for m in sys.modules} & heavy))")
    version, heavy = (out.splitlines() + [""])[:2]
    assert version == jax_impl.__version__
    assert heavy == "", f"`import jax_impl` imported {heavy}"


def test_import_and_a_public_function_change_no_jax_setting():
    out = _python(
        "import jax\n"
        "before = dict(jax.config.values)\n"
        "import jax_impl as mm\n"
        "after_import = dict(jax.config.values)\n"
        "import numpy as np\n"
        "from flax import nnx\n"
        "from jax_impl.models.mlp import InterpretabilityMLP\n"
        "from jax_impl.task.pointer import Split\n"
        "split = Split(np.zeros((4, 10), np.int32), np.zeros(4, np.float32))\n"
        "mm.evaluate(InterpretabilityMLP(rngs=nnx.Rngs(0)), split)\n"
        "after_call = dict(jax.config.values)\n"
        "for name, values in (('import jax_impl', after_import), ('mm.evaluate', after_call)):\n"
        "    changed = {k: (before.get(k), values.get(k)) for k in {*before, *values}\n"
        "               if before.get(k) != values.get(k)}\n"
        "    print(name, changed)\n"
        "print(jax.config.jax_default_matmul_precision)\n"
    )
    assert out.splitlines() == ["import jax_impl {}", "mm.evaluate {}", "None"]


def test_every_public_name_resolves_to_its_home_module():
    assert jax_impl.__all__ and len(set(jax_impl.__all__)) == len(jax_impl.__all__)
    homes = {name: module for module, names in jax_impl._LAZY.items() for name in names}
    for name in jax_impl.__all__:
        value = getattr(jax_impl, name)
        if isinstance(value, ModuleType):
            assert value.__name__ == f"jax_impl.{name}"
        else:  # defined there, not re-exported from elsewhere: a moved name fails here until the map follows it
            assert value.__module__ == homes[name], (name, value.__module__, homes[name])
    assert set(jax_impl.__all__) <= set(dir(jax_impl))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        jax_impl.no_such_name  # noqa: B018


def test_type_checkers_see_the_same_names():
    """The `if TYPE_CHECKING:` block imports exactly the lazy names, from the same modules, as `X as X`."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    (block,) = [n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING"]
    seen = set()
    for node in block.body:
        assert isinstance(node, ast.ImportFrom), ast.unparse(node)
        for alias in node.names:
            assert alias.asname == alias.name, f"{ast.unparse(node)}: re-export as `{alias.name} as {alias.name}`"
            seen.add((node.module, alias.name))
    expected = {(module, name) for module, names in jax_impl._LAZY.items() for name in names}
    expected |= {("jax_impl", name) for name in jax_impl._SUBPACKAGES}
    assert seen == expected


@pytest.mark.parametrize("name", jax_impl.__all__)
def test_every_public_name_has_a_docstring(name):
    value = getattr(jax_impl, name)
    doc = value.__doc__ or ""
    if inspect.isclass(value) and "__dataclass_fields__" in vars(value):
        # a dataclass without a docstring gets its signature as one
        assert not doc.startswith(f"{value.__name__}("), f"{name} has no docstring of its own"
    assert len(doc.strip()) >= 40, f"{name}: {doc!r}"


def test_the_version_has_one_home():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "jax_impl.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", jax_impl.__version__)
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["jax_impl"]
    assert (REPO / "jax_impl" / "py.typed").is_file()


def test_monosem_version(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"monosem {jax_impl.__version__}\n"


@pytest.mark.parametrize("name", COMPUTING)
def test_public_functions_that_compute_set_the_precision(name):
    assert getattr(getattr(jax_impl, name), MARK, None) == MATMUL_PRECISION


def test_a_public_function_traces_its_matmuls_at_highest_precision(monkeypatch):
    """mm.evaluate lowers the MLP's forward with every dot at HIGHEST; the same function lowered at the user's
    setting is not, and the user's setting is back after the call."""
    lowered = []
    forward = inference._mlp_forward

    def lowering(model, x, hook):
        lowered.append(forward.lower(model, x, hook).as_text())
        return forward(model, x, hook)

    monkeypatch.setattr(inference, "_mlp_forward", lowering)
    model = InterpretabilityMLP(rngs=nnx.Rngs(0))
    split = Split(np.zeros((4, 10), np.int32), np.zeros(4, np.float32))
    with jax.default_matmul_precision(USER_PRECISION):
        jax_impl.evaluate(model, split)
        assert jax.config.jax_default_matmul_precision == USER_PRECISION
        users = forward.lower(model, jnp.zeros((4, 10), jnp.float32), "layer2").as_text()
    (text,) = lowered
    dots = DOT.findall(text)
    assert len(dots) >= 4 and all(d == ("HIGHEST", "HIGHEST") for d in dots), dots  # four Linear layers
    assert DOT.findall(users) and ("HIGHEST", "HIGHEST") not in DOT.findall(users)


def test_a_function_jitted_outside_the_scope_is_traced_again_inside_it():
    traces = []

    @jax.jit
    def matmul(a, b):
        traces.append(jax.config.jax_default_matmul_precision)
        return a @ b

    a = jnp.ones((3, 4), jnp.float32)
    with jax.default_matmul_precision(USER_PRECISION):
        matmul(a, a.T)
        highest_precision(matmul)(a, a.T)
        highest_precision(matmul)(a, a.T)  # now cached at this precision
        matmul(a, a.T)
    assert traces == [USER_PRECISION, MATMUL_PRECISION]


def test_the_command_line_runs_its_commands_at_highest_precision(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(cli, "cmd_export", lambda args: seen.append(jax.config.jax_default_matmul_precision) or 0)
    with jax.default_matmul_precision(USER_PRECISION):
        assert cli.main(["export", "--run-dir", str(tmp_path)]) == 0
        assert jax.config.jax_default_matmul_precision == USER_PRECISION
    assert seen == [MATMUL_PRECISION]


def test_highest_precision_refuses_generators():
    with pytest.raises(TypeError, match="not generators"):
        highest_precision(lambda: (yield))
