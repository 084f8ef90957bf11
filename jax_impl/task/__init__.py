"""The pointer task: row generation and splits (pointer), the upstream .xlsx split format, and the task's
causal variables and counterfactual pairs (variables)."""
