"""The task's MLP in Flax NNX with PyTorch semantics (torch init, BatchNorm1d), its hook points and readout."""
