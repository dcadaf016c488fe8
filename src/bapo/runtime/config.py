"""Settings of the runtime layer: which model, on which device and in which dtype, its LoRA shape, and how it writes
answers. Options shared by several commands are declared here once, as field factories, so each has one default."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from bapo.core.fields import option
from bapo.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"
DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N."
DTYPE_HELP = ("auto (bfloat16 where the device computes in it natively: CUDA with bf16, a CPU with AVX512-BF16 or AMX; "
              "float32 elsewhere), float32, bfloat16 or float16.")


def model_option(help: str = "Model: smollm2-135m-instruct (embedded), a local HF directory, or a hub id.") -> Any:
    return option(DEFAULT_MODEL, help)


def cache_dir_option() -> Any:
    return option("", "Cache for converted models, base responses, reference log-probs and scores "
                      "(default $BAPO_CACHE_DIR, else ~/.cache/bapo).")


def device_option() -> Any:
    return option("auto", DEVICE_HELP)


def dtype_option() -> Any:
    return option("auto", DTYPE_HELP)


def check_device(device: str, dtype: str) -> None:
    """Reject a malformed ``device`` or ``dtype`` before anything is loaded."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device):
        raise ConfigError(f"device: '{device}' is not one of auto, cpu, cuda, cuda:N")
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype: '{dtype}' is not one of auto, float32, bfloat16, float16")


@dataclass
class LoraSettings:
    """LoRA adapter shape (peft)."""

    r: int = option(16, "LoRA rank.")
    alpha: int = option(32, "LoRA alpha (scale = alpha / r).")
    dropout: float = option(0.0, "Dropout on the LoRA branch; 0 keeps policy == reference at step 0.")
    target_modules: list[str] = option(["all-linear"], "Modules to adapt; 'all-linear' = every linear layer but the "
                                                       "output head.", flag="targets")


@dataclass
class BaseResponseConfig:
    """How the reference model writes its base responses y_b (``bapo base``)."""

    max_new_tokens: int = option(96, "Longest base response, in tokens.")
    do_sample: bool = option(False, "Sample instead of greedy decoding.", flag="sample/greedy")
    temperature: float = option(0.7, "Sampling temperature (used only with do_sample).")
    top_p: float = option(0.95, "Nucleus sampling mass (used only with do_sample).")
    num_responses: int = option(1, "Base responses per prompt; more than 1 needs do_sample.", flag="num")
    batch_size: int = option(16, "Prompts per generation batch (left-padded, length-sorted).")
    seed: int = option(0, "Seed for sampled base responses.")

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError("base.max_new_tokens: must be at least 1")
        if self.num_responses < 1:
            raise ConfigError("base.num_responses: must be at least 1")
        if self.num_responses > 1 and not self.do_sample:
            raise ConfigError("base.num_responses: more than 1 base response per prompt needs base.do_sample: true")
        if self.batch_size < 1:
            raise ConfigError("base.batch_size: must be at least 1")
        if self.do_sample and self.temperature <= 0:
            raise ConfigError("base.temperature: must be positive when sampling")

    def key(self) -> dict[str, Any]:
        """The settings that change what is generated (batch size does not, under greedy decoding)."""
        d = dataclasses.asdict(self)
        d.pop("batch_size")
        if not self.do_sample:
            for k in ("temperature", "top_p", "seed"):
                d.pop(k)
        return d
