"""Training: ``bapo train`` (one adapter) and ``bapo base`` (the reference step alone)."""
