"""The circuit's settings as data (no JAX here: the command line builds its flags from these)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from jax_impl.checks import non_finite_field
from jax_impl.errors import UserError

LAYERS = ("layer1", "layer2", "layer3")  # the MLP maps replaced: input -> layer1, layer1 -> layer2, layer2 -> layer3
READS = {"layer1": "input", "layer2": "layer1", "layer3": "layer2"}
ARCHITECTURES = ("topk", "batchtopk", "relu-l1", "anthropic", "jumprelu", "matryoshka")


def flag(name: str) -> str:
    """The command line's flag of a CircuitConfig field."""
    return f"--circuit-{name.replace('_', '-')}"


@dataclass(frozen=True)
class CircuitConfig:
    """How the replacement model is trained and the attribution graphs are built.

    Transcoders (one per replaced layer, LAYERS order): `variant` (the architecture, any of the SAE family), `dict_sizes`
    (features per layer), `k` (features kept per row and layer, for the k-architectures: topk, batchtopk,
    matryoshka), `l1` (the penalty of the others: relu-l1's/anthropic's l1_coeff, jumprelu's l0_coeff), `skip`
    (1: a linear skip connection per transcoder, 0: none), `chained` (1: transcoder l trains on transcoder
    l-1's prediction as its input, so that it learns to read what the replacement without error terms gives it;
    0: on the MLP's true layer_{l-1}; the target is the MLP's true layer_l either way), `epochs`, `batch_size`, `lr`, `train_rows` (rows the
    transcoders train on: the run's train split, topped up with fresh task rows outside the held-out splits' rows
    when larger; 0: the train split as it is); then `finetune_epochs` of end-to-end training of the three chained
    together at `finetune_lr` (replacement.finetune_transcoders: each one's own loss on its chained input plus
    `output_weight` x the MSE between the replacement's output and the MLP's; 0: none).

    Graphs: `share` of the features' total |influence| the kept feature nodes must carry, at most
    `max_feature_nodes` of them; `checks`: the top features of each graph ablated in the (nonlinear) replacement
    model, and `edge_checks` of its strongest feature-to-feature / input-to-feature edges, each compared with its
    attribution; an attribution agrees when |measured - attributed| <= `atol` + `rtol` |attributed|.

    Labels and the global view: `label_rows` held-out rows each feature is scored on against the task's concepts,
    `global_graphs` held-out inputs whose graphs count how often each feature is kept, `global_features` the most
    frequent ones per variable, `pairs` counterfactual pairs per variable that measure which one a feature
    mediates, `seed` for the transcoders' initialisation and shuffling and every drawn row.
    """

    variant: str = "relu-l1"
    dict_sizes: tuple[int, ...] = (256, 512, 256)
    k: tuple[int, ...] = (8, 8, 8)
    l1: float = 3e-4
    skip: int = 1
    chained: int = 1
    epochs: int = 8
    batch_size: int = 256
    lr: float = 3e-3
    train_rows: int = 64000
    finetune_epochs: int = 2
    finetune_lr: float = 3e-4
    output_weight: float = 1.0
    share: float = 0.9
    max_feature_nodes: int = 30
    checks: int = 5
    edge_checks: int = 5
    atol: float = 0.05
    rtol: float = 0.1
    label_rows: int = 2000
    global_graphs: int = 1000
    global_features: int = 12
    pairs: int = 256
    seed: int = 0

    def validate(self) -> CircuitConfig:
        """self; UserError naming the flag of the first field that cannot work."""
        found = non_finite_field(self)
        if found is not None:
            raise UserError(f"{flag(found[0])} must be a finite number, got {found[1]}")
        if self.variant not in ARCHITECTURES:
            raise UserError(f"{flag('variant')} must be one of {', '.join(ARCHITECTURES)}, got {self.variant!r}")
        for name in ("dict_sizes", "k"):
            value = getattr(self, name)
            if len(value) != len(LAYERS) or any(not isinstance(v, int) or v < 1 for v in value):
                raise UserError(f"{flag(name)} must be {len(LAYERS)} positive integers (one per layer: "
                                f"{','.join(LAYERS)}), got {','.join(map(str, value))}")
        if any(k > d for k, d in zip(self.k, self.dict_sizes)):
            raise UserError(f"{flag('k')} must not exceed {flag('dict_sizes')} layer by layer, got "
                            f"{','.join(map(str, self.k))} for {','.join(map(str, self.dict_sizes))}")
        for name in ("skip", "chained"):
            if getattr(self, name) not in (0, 1):
                raise UserError(f"{flag(name)} must be 0 or 1, got {getattr(self, name)}")
        if not 0 < self.share <= 1:
            raise UserError(f"{flag('share')} must be in (0, 1], got {self.share}")
        if not 0 <= self.seed < 2**63:
            raise UserError(f"{flag('seed')} must be in 0..{2**63 - 1}, got {self.seed}")
        for name in ("train_rows", "finetune_epochs", "output_weight", "checks", "edge_checks", "atol", "rtol", "l1"):
            if getattr(self, name) < 0:
                raise UserError(f"{flag(name)} must be >= 0, got {getattr(self, name)}")
        for f in dataclasses.fields(self):
            if f.name in ("epochs", "batch_size", "lr", "finetune_lr", "max_feature_nodes", "label_rows", "global_graphs",
                          "global_features", "pairs") and not getattr(self, f.name) > 0:
                raise UserError(f"{flag(f.name)} must be positive, got {getattr(self, f.name)}")
        return self

    def training_record(self) -> dict:
        """The fields that decide what the transcoders are (their cache key beside the run's own identity)."""
        keys = ("variant", "dict_sizes", "k", "l1", "skip", "chained", "epochs", "batch_size", "lr", "train_rows",
                "finetune_epochs", "finetune_lr", "output_weight", "seed")
        return {name: (list(v) if isinstance(v := getattr(self, name), tuple) else v) for name in keys}
