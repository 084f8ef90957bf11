"""What trained models compute and mean: inference and metrics, the feature atlas, ground-truth scores and
the causal map (causal)."""
