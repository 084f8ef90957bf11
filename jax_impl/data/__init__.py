"""The SAE's training data: a user's activation files (activations), sets of them and SAELens's cached activations
(activation_sets), their chunks as the trainer streams them (streaming), activations harvested from the MLP (harvest)
and synthetic activations with planted features (synthetic)."""
