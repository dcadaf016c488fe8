"""The pure core: preference losses, per-sequence log-probs and token encoding. Imports nothing of bapo but errors."""
