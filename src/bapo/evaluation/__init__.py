"""Evaluation: task kinds, metrics, typed records, ``bapo eval`` and ``bapo report``."""
