"""The SAE's training data: a user's activation files (activations), activations harvested from the MLP
(harvest) and synthetic activations with planted features (synthetic)."""
