"""monosemanticity-mlp: a pointer-arithmetic MLP and its sparse-autoencoder decomposition in JAX/Flax NNX."""

import jax

# Float32 matmuls must stay float32 on accelerators too (GPUs would otherwise use TF32), or the parity
# with the PyTorch reference is lost at the third decimal.
jax.config.update("jax_default_matmul_precision", "highest")

__version__ = "0.1.0"
