"""The SAE's training data: a user's activation files (activations), shards and SAELens caches (activation_sets),
streamed chunks (streaming), activations harvested from the MLP (harvest) and synthetic ones (synthetic)."""
