"""The causal map's settings as data (no JAX here: the command line builds its flags from these)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from jax_impl.checks import non_finite_field
from jax_impl.errors import UserError


@dataclass(frozen=True)
class DASConfig:
    """Distributed alignment search: Adam steps, pairs per step, learning rate."""

    steps: int = 400
    batch_size: int = 256
    lr: float = 1e-2



MAX_REPORTED_RANK = 16  # study.py reports the best DAS rank among the ranks up to this


def _flag(name: str) -> str:
    return f"--causal-{name.replace('_', '-')}"


@dataclass(frozen=True)
class CausalConfig:
    """How the causal map is measured. Pairs per variable: fit (DAS training, feature selection), eval (every
    IIA reported), isolation; ranks: the DAS subspace dimensions; max_features: the largest named feature set;
    shortlist: candidates the greedy selection tries per step; random_draws: random feature sets per size;
    min_iia: the IIA a named feature set must reach (on the fit pairs) to stop growing; circuit_rows: rows the
    sparse circuit is checked on; seed: the pairs' and the DAS initialisations' seed; variables: which of the
    task's variables to map (all by default)."""

    fit_pairs: int = 1024
    eval_pairs: int = 1024
    isolation_pairs: int = 512
    ranks: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    max_features: int = 16
    shortlist: int = 48
    random_draws: int = 5
    das_steps: int = 400
    das_batch: int = 256
    das_lr: float = 1e-2
    min_iia: float = 0.9
    circuit_rows: int = 2048
    seed: int = 0
    variables: str = ""  # comma-separated names of the task's variables to map (P1,A,T); empty: all of them

    def variable_names(self, known: list[str]) -> list[str]:
        """The variables to map, in the task's order; UserError naming the flag for an unknown one."""
        if not self.variables.strip():
            return list(known)
        asked = [v.strip() for v in self.variables.split(",") if v.strip()]
        unknown = [v for v in asked if v not in known]
        if unknown:
            raise UserError(f"--causal-variables: unknown {', '.join(unknown)}; expected some of {', '.join(known)}")
        return [v for v in known if v in asked]

    def validate(self) -> CausalConfig:
        found = non_finite_field(self)
        if found is not None:
            raise UserError(f"{_flag(found[0])} must be a finite number, got {found[1]}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "ranks":
                if not value or any(not isinstance(r, int) or r < 1 for r in value):
                    raise UserError(f"--causal-ranks must be positive integers, got {value}")
                if min(value) > MAX_REPORTED_RANK:  # the best DAS rank is reported among those up to it
                    raise UserError(f"--causal-ranks must include a rank of at most {MAX_REPORTED_RANK}, got {value}")
            elif f.name == "seed":
                if not 0 <= value < 2**63:
                    raise UserError(f"--causal-seed must be in 0..{2**63 - 1}, got {value}")
            elif f.name == "variables":
                continue  # checked against the task's variables when the pairs are drawn (variable_names)
            elif f.name == "min_iia":
                if not 0 < value <= 1:
                    raise UserError(f"--causal-min-iia must be in (0, 1], got {value}")
            elif not value > 0:
                raise UserError(f"{_flag(f.name)} must be positive, got {value}")
        return self

    def memory_bytes(self, input_dim: int, hook_width: int) -> int:
        """A lower bound of the memory one hook's map holds at once (jax_impl.checks.check_memory): one variable's
        pairs (a base and a source row, and their activations at the hook), the circuit rows with theirs, and a
        DAS training's keys (one per step) and batch."""
        pairs = self.fit_pairs + self.eval_pairs + self.isolation_pairs
        return 4 * (2 * pairs * (input_dim + hook_width) + self.circuit_rows * (input_dim + hook_width)
                    + 2 * self.das_steps + self.das_batch * hook_width * max(self.ranks))

    def memory_flags(self) -> str:
        return (f"--causal-fit-pairs {self.fit_pairs}, --causal-eval-pairs {self.eval_pairs}, --causal-isolation-pairs "
                f"{self.isolation_pairs}, --causal-circuit-rows {self.circuit_rows} and --causal-das-steps {self.das_steps}")

    @classmethod
    def quick(cls) -> CausalConfig:
        """The `monosem run` stage's settings: fewer pairs, ranks 1, 4 and 16, shorter DAS training (about 15 s
        for one hook on 2 cores)."""
        return cls(fit_pairs=512, eval_pairs=512, isolation_pairs=256, ranks=(1, 4, 16), das_steps=150,
                   das_batch=128, random_draws=3, circuit_rows=1024)

    @property
    def das(self) -> DASConfig:
        return DASConfig(steps=self.das_steps, batch_size=self.das_batch, lr=self.das_lr)
