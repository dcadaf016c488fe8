"""bapo: personalize an instruction-tuned LLM to each user's preferences without making it forget.

Python API mirroring the CLI::

    from bapo import TrainConfig, train
    train(TrainConfig(data=DataConfig(path="pairs.jsonl"), out="adapters/alice"))
"""

from bapo.config import BaseResponseConfig, DataConfig, LoraSettings, LossConfig, TrainConfig
from bapo.errors import BapoError, ConfigError, DataError, ModelError

__version__ = "0.1.0"


def train(config: TrainConfig):
    """Train one LoRA adapter (``bapo train``); returns a :class:`bapo.training.TrainResult`."""
    from bapo.training import train as _train

    return _train(config)


__all__ = ["BaseResponseConfig", "DataConfig", "LoraSettings", "LossConfig", "TrainConfig", "BapoError", "ConfigError",
           "DataError", "ModelError", "train"]
