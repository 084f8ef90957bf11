"""The commands' work over folders: the run directory and its config, the pipeline's stages, train-sae, sweeps,
export, parity and the causal stage. The CLI (jax_impl.cli) is a thin layer over these."""
