"""The pointer task: its shape, targets and generation (pointer), a split's upstream .xlsx format (splits), the
concept vocabulary features are scored against (concepts), and its causal variables and counterfactual pairs
(variables)."""
