"""Where preference pairs come from and how they are cut to length. The two length limits are shared by training
and evaluation and declared here once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bapo.core.fields import option, section
from bapo.core.tokens import Renderer
from bapo.errors import ConfigError


def max_length_option() -> Any:
    return option(512, "Longest prompt + response, in tokens.")


def max_prompt_length_option() -> Any:
    return option(256, "Longest prompt, in tokens.")


def check_lengths(max_length: int, max_prompt_length: int, prefix: str = "") -> None:
    if max_prompt_length < 1 or max_length <= max_prompt_length:
        raise ConfigError(f"{prefix}max_length: must exceed {prefix}max_prompt_length, which must be at least 1")


@dataclass
class DataConfig:
    """Where the preference pairs come from and how they are cut to length."""

    path: str = option("", "Preference pairs: JSONL, JSON, CSV, Parquet file, or a Hugging Face dataset id.",
                       flag="data")
    split: str = option("train", "Split to read when path is a Hugging Face dataset.")
    eval_path: str = option("", "Separate held-out pairs; when empty, a seeded holdout fraction of path is used.",
                            flag="eval-data")
    holdout: float = option(0.1, "Fraction of prompts held out for evaluation (ignored with eval_path).")
    user: str = option("", "Keep only records with this user_id.")
    max_length: int = max_length_option()
    max_prompt_length: int = max_prompt_length_option()
    on_overlong: str = option("truncate", "Over-long texts: truncate (prompt from the left, response from the right) "
                                          "or reject.")
    enable_thinking: bool = option(False, "Passed to the chat template: Qwen 3's thinking mode (off: an empty <think> "
                                          "block before each answer); templates without it ignore it.")

    def validate(self) -> None:
        if not 0 <= self.holdout < 1:
            raise ConfigError("data.holdout: must be in [0, 1)")
        if self.on_overlong not in ("truncate", "reject"):
            raise ConfigError("data.on_overlong: choose truncate or reject")
        check_lengths(self.max_length, self.max_prompt_length, "data.")


def renderer(tokenizer, data: DataConfig) -> Renderer:
    """The :class:`~bapo.core.tokens.Renderer` that cuts texts to ``data``'s limits the way ``data`` asks."""
    return Renderer(tokenizer, data.max_length, data.max_prompt_length, truncate=data.on_overlong == "truncate",
                    enable_thinking=data.enable_thinking)


@dataclass
class ValidateConfig:
    """A ``bapo validate`` run: check a file of pairs or thumbs, and with a model its token lengths."""

    data: DataConfig = section(DataConfig, cli=("path", "split", "user", "max_length", "max_prompt_length"))
    model: str = option("", "Also check token lengths with this model's tokenizer (no model: records only).")
