"""Outputs that other engines load as they are (vLLM, SGLang, LoRAX, plain transformers + PEFT): the model bapo runs
as a plain Hugging Face directory, and an adapter with its scale built in, or merged into a full model.

An adapter's scale ``s`` (``bapo eval --adapter-scale``, ``bapo serve``'s ``adapter_scale``, a forgetting budget's
choice) multiplies LoRA's update ``s * (alpha / r) * B A x``; it is built in by multiplying ``B`` by ``s``, so the
exported adapter is a standard PEFT adapter that any engine applies at its default scale and gets bapo's scaled
outputs. Every output is written into a temporary folder beside the target and renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from bapo.errors import ConfigError
from bapo.io import atomic_write_text
from bapo.runtime.adapters import applied, is_full_model
from bapo.runtime.models import load_model, load_tokenizer, resolve_model

EXPORT_INFO = "bapo_export.json"  # what an exported folder was made from, and its built-in scale


@dataclass(frozen=True)
class Exported:
    """What ``bapo export`` wrote."""

    out: Path
    kind: str  # "model" (a Hugging Face model directory) or "adapter" (a PEFT adapter directory)
    scale: float | None = None


def built_in_scale(adapter: str | Path) -> float:
    """The scale an exported adapter carries (1.0 for any other adapter)."""
    return float(export_info(adapter)["scale"])


def export_info(adapter: str | Path) -> dict:
    """What ``bapo serve`` lists for an adapter: its built-in scale (1.0 unless exported or probed with a budget) and
    the forgetting budget it was scaled to meet (None without one)."""
    path = Path(adapter) / EXPORT_INFO
    info = json.loads(path.read_text()) if path.exists() else {}
    return {"scale": float(info.get("scale", 1.0)), "budget": info.get("budget")}


@contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``, renamed to ``out`` when the block succeeds, removed when it fails."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"out: {out} already exists and is not empty; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_model(model: str, out: str | Path, cache_dir: str = "") -> Exported:
    """The model bapo loads for ``model`` (the embedded one included) as a plain Hugging Face directory."""
    path = resolve_model(model, cache_dir)
    with _staged(Path(out)) as tmp:
        if Path(path).is_dir():  # already a Hugging Face directory (the embedded model's converted cache is one)
            for f in Path(path).iterdir():
                if f.is_file() and not f.name.startswith("."):
                    shutil.copy2(f, tmp / f.name)
        else:  # a hub id: loaded and saved as it is
            load_model(path, "cpu", "float32").save_pretrained(tmp)
            load_tokenizer(path).save_pretrained(tmp)
    return Exported(Path(out), "model")


def check_scale(scale: float) -> None:
    if not 0.0 <= scale <= 1.0:
        raise ConfigError(f"scale: {scale:g} is outside [0, 1] (0 is the base model, 1 the adapter as trained)")


def export_adapter(adapter: str | Path, out: str | Path, scale: float = 1.0, merge: bool = False, model: str = "",
                   cache_dir: str = "", extra: dict | None = None) -> Exported:
    """``adapter`` with ``scale`` built in: a standard PEFT adapter, or with ``merge`` a full model directory (the
    base model's weights plus the scaled update, in float32). A fully fine-tuned model directory is exported as the
    interpolation ``base + scale (tuned - base)``, always a model directory. ``extra`` is recorded in the folder's
    ``bapo_export.json`` beside the scale and the source (a forgetting budget's probe, for example)."""
    check_scale(scale)
    adapter = Path(adapter)
    full = is_full_model(adapter)
    if not full and not (adapter / "adapter_config.json").exists():
        raise ConfigError(f"adapter: {adapter} is not an adapter directory (no adapter_config.json) nor a model "
                          f"directory")
    # an exported adapter exported again: the scales multiply
    info = {"source": str(adapter.resolve()), "scale": scale * built_in_scale(adapter), **(extra or {})}
    if merge or full:
        return _export_merged(adapter, Path(out), scale, model, cache_dir, info)
    with _staged(Path(out)) as tmp:
        write_scaled(adapter, tmp, scale, info)
        for name in ("README.md", "config.yaml", "run.json"):  # what made it, for a reader; engines ignore these
            if (adapter / name).exists():
                shutil.copy2(adapter / name, tmp / name)
    return Exported(Path(out), "adapter", scale)


def write_scaled(adapter: Path, out: Path, scale: float, info: dict) -> None:
    """Write ``adapter`` (a LoRA adapter directory) into the folder ``out`` with ``scale`` built into its B weights:
    ``adapter_config.json``, ``adapter_model.safetensors`` and ``bapo_export.json`` (``info``), each file replaced
    atomically (``out`` may be the folder a trained adapter lives in)."""
    from safetensors.torch import load_file, save_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    _check_linear(adapter, config)
    weights_file = adapter / "adapter_model.safetensors"
    if not weights_file.exists():
        raise ConfigError(f"adapter: {adapter} has no adapter_model.safetensors")
    weights = load_file(str(weights_file))
    if not any(".lora_B." in k for k in weights):
        raise ConfigError(f"adapter: {adapter} has no LoRA B weights to scale")
    scaled = {k: (v * scale).to(v.dtype) if ".lora_B." in k else v for k, v in weights.items()}
    tmp = out / f".adapter_model.{os.getpid()}.tmp"
    save_file(scaled, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "adapter_model.safetensors")
    atomic_write_text(out / "adapter_config.json", json.dumps(config, indent=2))
    atomic_write_text(out / EXPORT_INFO, json.dumps(info, indent=2))


def _check_linear(adapter: Path, config: dict) -> None:
    """Scaling B scales the update only for plain LoRA: DoRA normalises it and modules_to_save are whole layers."""
    if config.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"adapter: {adapter} is a {config.get('peft_type')} adapter; only LoRA can be scaled")
    if config.get("use_dora"):
        raise ConfigError(f"adapter: {adapter} uses DoRA, whose update is not linear in its scale; use --merge")
    if config.get("modules_to_save"):
        raise ConfigError(f"adapter: {adapter} saves whole modules ({', '.join(config['modules_to_save'])}), which "
                          f"a scale cannot apply to; use --merge")


def _base_model_of(adapter: Path, model: str, full: bool) -> str:
    """The model an adapter was trained on: ``model`` if given, else its run.json or adapter_config.json."""
    if model:
        return model
    run = adapter / "run.json"
    if run.exists():
        named = json.loads(run.read_text()).get("model")
        if named:
            return named
    if not full:
        named = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if named:
            return named
    raise ConfigError(f"model: the base model of {adapter} is not recorded; give it with --model")


def _export_merged(adapter: Path, out: Path, scale: float, model: str, cache_dir: str, info: dict) -> Exported:
    full = is_full_model(adapter)
    path = resolve_model(_base_model_of(adapter, model, full), cache_dir)
    base = load_model(path, "cpu", "float32")
    with applied(base, adapter, scale, merge=True) as tuned, _staged(out) as tmp:  # float32: merged, not a branch
        if full:
            tuned.save_pretrained(tmp)
        else:
            _save_merged(tuned, tmp)
        load_tokenizer(path).save_pretrained(tmp)
        (tmp / EXPORT_INFO).write_text(json.dumps({**info, "merged": True, "base_model": path}, indent=2))
    return Exported(out, "model", scale)


def _save_merged(peft_model, tmp: Path) -> None:
    """The merged weights (``applied`` has added the scaled update into the base layers) saved as a plain model: the
    base model's state with peft's wrapper names taken out."""
    base = peft_model.get_base_model()
    state = {}
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor
    with torch.no_grad():
        base.save_pretrained(tmp, state_dict=state)
