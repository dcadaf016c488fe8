"""bapo: personalize an instruction-tuned LLM to each user's preferences without making it forget.

A Python API that mirrors the command line, each function taking its config dataclass and returning a typed result::

    import bapo
    bapo.train(bapo.TrainConfig(data=bapo.DataConfig(path="pairs.jsonl"), out="adapters/alice"))
    bapo.evaluate(bapo.EvalConfig(adapters=["adapters/alice"], out="results"))
    bapo.report("results", "report")

| function | command | config | result |
|---|---|---|---|
| :func:`train` | ``bapo train`` | :class:`TrainConfig` | :class:`~bapo.training.run.TrainResult` |
| :func:`base_responses` | ``bapo base`` | :class:`BaseRunConfig` | :class:`~bapo.training.base.BaseResult` |
| :func:`evaluate` | ``bapo eval`` | :class:`EvalConfig` | :class:`~bapo.evaluation.runner.EvalResult` |
| :func:`report` | ``bapo report`` | results directory | path of ``report.html`` |
| :func:`balance` | ``bapo balance`` | :class:`BalanceConfig` | :class:`~bapo.balancing.run.BalanceResult` |
| :func:`study` | ``bapo study`` | :class:`StudyConfig` | :class:`~bapo.studies.run.StudyResult` |
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> (module, attribute). Loaded on first use (PEP 562), so importing one part of bapo (bapo.core.losses, say)
# does not pull in training, evaluation and plotting; this is not a way around an import cycle (there is none).
_API = {
    "BalanceConfig": ("bapo.balancing.config", "BalanceConfig"),
    "BaseResponseConfig": ("bapo.runtime.config", "BaseResponseConfig"),
    "BaseRunConfig": ("bapo.training.config", "BaseRunConfig"),
    "BudgetSettings": ("bapo.runtime.config", "BudgetSettings"),
    "DataConfig": ("bapo.data.config", "DataConfig"),
    "EvalConfig": ("bapo.evaluation.config", "EvalConfig"),
    "LoraSettings": ("bapo.runtime.config", "LoraSettings"),
    "LossConfig": ("bapo.core.losses", "LossConfig"),
    "StudyConfig": ("bapo.studies.config", "StudyConfig"),
    "TrainConfig": ("bapo.training.config", "TrainConfig"),
    "BalanceResult": ("bapo.balancing.run", "BalanceResult"),
    "BaseResult": ("bapo.training.base", "BaseResult"),
    "EvalResult": ("bapo.evaluation.runner", "EvalResult"),
    "Record": ("bapo.evaluation.records", "Record"),
    "StudyResult": ("bapo.studies.run", "StudyResult"),
    "TrainResult": ("bapo.training.run", "TrainResult"),
    "balance": ("bapo.balancing.run", "balance"),
    "base_responses": ("bapo.training.base", "base_responses"),
    "evaluate": ("bapo.evaluation.runner", "evaluate"),
    "report": ("bapo.evaluation.report", "write_report"),
    "study": ("bapo.studies.run", "run_study"),
    "train": ("bapo.budget.run", "train"),  # training.run.train, plus the forgetting budget when one is given
}
from bapo.errors import BapoError, ConfigError, DataError, ModelError  # noqa: E402


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'bapo' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__version__ = "0.1.0"

__all__ = ["BalanceConfig", "BalanceResult", "balance", "BaseResponseConfig", "BaseRunConfig", "BudgetSettings", "DataConfig", "EvalConfig", "LoraSettings", "LossConfig",
           "StudyConfig", "TrainConfig", "BaseResult", "EvalResult", "Record", "StudyResult", "TrainResult",
           "BapoError", "ConfigError", "DataError", "ModelError", "base_responses", "evaluate", "report", "study",
           "train"]
