"""Other frameworks' formats: PyTorch state_dicts and tensor files (bridge) and SAELens folders (saelens)."""
