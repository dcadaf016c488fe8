"""Typed run configurations: one source of defaults, loadable from YAML, overridable from the CLI.

Every field's ``help`` metadata is the text shown by ``bapo ... --help`` and written beside the value in the
resolved ``config.yaml`` of each run.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bapo.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"


def option(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its default and the help text shown by the CLI and written beside it in YAML."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class LoraSettings:
    """LoRA adapter shape (peft)."""

    r: int = option(16, "LoRA rank.")
    alpha: int = option(32, "LoRA alpha (scale = alpha / r).")
    dropout: float = option(0.0, "Dropout on the LoRA branch; 0 keeps policy == reference at step 0.")
    target_modules: list[str] = option(["all-linear"], "Modules to adapt; 'all-linear' = every linear layer but the output head.")


@dataclass
class BaseResponseConfig:
    """How the reference model writes its base responses y_b (``bapo base``)."""

    max_new_tokens: int = option(96, "Longest base response, in tokens.")
    do_sample: bool = option(False, "Sample instead of greedy decoding.")
    temperature: float = option(0.7, "Sampling temperature (used only with do_sample).")
    top_p: float = option(0.95, "Nucleus sampling mass (used only with do_sample).")
    num_responses: int = option(1, "Base responses per prompt; more than 1 needs do_sample.")
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


@dataclass
class LossConfig:
    """Which preference loss, and the BAPO anchor (see ``bapo.losses``)."""

    method: str = option("bapo", "Loss: bapo, or a pairwise loss (dpo, cdpo, ipo, hinge, robust, simpo).")
    pref_loss: str = option("dpo", "With method bapo: the pairwise loss the base anchor is added to.")
    beta: float = option(0.1, "Inverse temperature of the implicit reward (DPO's beta).")
    label_smoothing: float = option(0.1, "Assumed label-flip rate for cdpo and robust.")
    simpo_gamma: float = option(0.5, "SimPO target margin gamma.")
    rpo_alpha: float = option(0.0, "Weight of an NLL term on chosen responses (RPO); 0 = off.")
    anchor_lambda: float = option(1.0, "BAPO: weight lambda of the base anchor.")
    anchor: str = option("hinge", "BAPO anchor shape: hinge (the paper's max(0, gap)), abs or squared.")
    anchor_reduction: str = option("sum", "BAPO anchor log-probs: sum over tokens (the paper) or per-token mean.")

    def validate(self) -> None:
        from bapo.losses import ANCHORS, PAIRWISE_LOSSES

        if self.method != "bapo" and self.method not in PAIRWISE_LOSSES:
            raise ConfigError(f"loss.method: unknown '{self.method}'; choose bapo or one of {sorted(PAIRWISE_LOSSES)}")
        if self.pref_loss not in PAIRWISE_LOSSES:
            raise ConfigError(f"loss.pref_loss: unknown '{self.pref_loss}'; choose one of {sorted(PAIRWISE_LOSSES)}")
        if self.anchor not in ANCHORS:
            raise ConfigError(f"loss.anchor: unknown '{self.anchor}'; choose one of {sorted(ANCHORS)}")
        if self.anchor_reduction not in ("sum", "mean"):
            raise ConfigError("loss.anchor_reduction: choose sum or mean")
        if self.beta <= 0:
            raise ConfigError("loss.beta: must be positive")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError("loss.label_smoothing: must be in [0, 0.5)")
        if self.anchor_lambda < 0:
            raise ConfigError("loss.anchor_lambda: must be non-negative")

    @property
    def uses_anchor(self) -> bool:
        return self.method == "bapo" and self.anchor_lambda > 0

    @property
    def pairwise(self) -> str:
        return self.pref_loss if self.method == "bapo" else self.method


@dataclass
class DataConfig:
    """Where the preference pairs come from and how they are cut to length."""

    path: str = option("", "Preference pairs: JSONL, JSON, CSV, Parquet file, or a Hugging Face dataset id.")
    split: str = option("train", "Split to read when path is a Hugging Face dataset.")
    eval_path: str = option("", "Separate held-out pairs; when empty, a seeded holdout fraction of path is used.")
    holdout: float = option(0.1, "Fraction of prompts held out for evaluation (ignored with eval_path).")
    user: str = option("", "Keep only records with this user_id.")
    max_length: int = option(512, "Longest prompt + response, in tokens.")
    max_prompt_length: int = option(256, "Longest prompt, in tokens.")
    on_overlong: str = option("truncate", "Over-long texts: truncate (prompt from the left, response from the right) or reject.")

    def validate(self) -> None:
        if not 0 <= self.holdout < 1:
            raise ConfigError("data.holdout: must be in [0, 1)")
        if self.on_overlong not in ("truncate", "reject"):
            raise ConfigError("data.on_overlong: choose truncate or reject")
        if self.max_prompt_length < 1 or self.max_length <= self.max_prompt_length:
            raise ConfigError("data.max_length: must exceed data.max_prompt_length, which must be at least 1")


@dataclass
class TrainConfig:
    """A whole ``bapo train`` run. ``bapo.train(TrainConfig(...))`` is the same as the CLI."""

    model: str = option(DEFAULT_MODEL, "Model: smollm2-135m-instruct (embedded), a local HF directory, or a hub id.")
    out: str = option("", "Output directory for the adapter, config, metrics and held-out split.")
    cache_dir: str = option("", "Cache for converted models, base responses and reference log-probs (default ~/.cache/bapo).")
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    base: BaseResponseConfig = field(default_factory=BaseResponseConfig)
    epochs: float = option(1.0, "Passes over the training pairs.")
    max_steps: int = option(-1, "Stop after this many optimizer steps (-1 = use epochs).")
    batch_size: int = option(4, "Pairs per device per step.")
    grad_accum: int = option(1, "Gradient accumulation steps.")
    micro_batch_size: int = option(2, "Pairs per forward pass within a step (the largest divisor of batch_size up to "
                                      "this; 0 = the whole batch): same gradients, less activation memory.")
    lr: float = option(1e-4, "Peak learning rate (AdamW).")
    warmup_ratio: float = option(0.05, "Fraction of steps of linear warm-up.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    seed: int = option(42, "Seed for data split, shuffling and initialisation.")
    save_steps: int = option(50, "Checkpoint every N optimizer steps.")
    logging_steps: int = option(1, "Log metrics every N optimizer steps.")
    resume: bool = option(False, "Continue from the newest checkpoint in OUT/checkpoints.")
    pack_prompts: bool = option(True, "Encode each prompt once for its chosen, rejected and base responses (4D mask).")

    @property
    def pairs_per_forward(self) -> int:
        """The micro-batch actually used: the largest divisor of ``batch_size`` not above ``micro_batch_size``."""
        if not self.micro_batch_size or self.micro_batch_size >= self.batch_size:
            return self.batch_size
        return max(d for d in range(1, self.micro_batch_size + 1) if self.batch_size % d == 0)

    def validate(self) -> None:
        if not self.out:
            raise ConfigError("out: an output directory is required")
        if not self.data.path:
            raise ConfigError("data.path: preference data is required")
        for sub in (self.data, self.loss, self.base):
            sub.validate()
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("batch_size and grad_accum: must be at least 1")
        if self.micro_batch_size < 0:
            raise ConfigError("micro_batch_size: must be 0 (whole batch) or positive")
        if self.lr <= 0:
            raise ConfigError("lr: must be positive")


# ---------------------------------------------------------------------------------------------------------------
# YAML and overrides


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"{path}: unknown option; known: {', '.join(sorted(names))}")
        tp = hints[key]
        kwargs[key] = from_dict(tp, value, path) if _is_dataclass_type(tp) else _coerce(value, tp, path)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of ``cfg`` with dotted-key overrides (``{"loss.beta": 0.2}``) applied; None values are skipped."""
    data = to_dict(cfg)
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return from_dict(type(cfg), data)


def load_yaml(path: str | Path, cls: type) -> Any:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"{mark.line + 1}" if mark else "?"
        raise ConfigError(f"{p}:{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    try:
        return from_dict(cls, raw)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def dump_yaml(cfg: Any, indent: int = 0) -> str:
    """YAML of a config with each field's help text as a comment beside it; ``load_yaml`` reads it back."""
    lines = []
    pad = "  " * indent
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            doc = (type(value).__doc__ or "").strip().splitlines()[0]
            lines.append(f"{pad}{f.name}:  # {doc}")
            lines.append(dump_yaml(value, indent + 1).rstrip("\n"))
            continue
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        text = text.removesuffix("\n...").strip()
        help_text = f.metadata.get("help", "")
        lines.append(f"{pad}{f.name}: {text}" + (f"  # {help_text}" if help_text else ""))
    return "\n".join(lines) + "\n"
