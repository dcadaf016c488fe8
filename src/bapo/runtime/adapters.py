"""Adapters over one loaded base model: identify one, check it fits the model, and apply it at a scale (merged into
the weights or as peft's separate layers), with the base model left exactly as it was afterwards.

A fully fine-tuned model directory (``bapo train --finetune full``) is taken like an adapter: applied at scale ``s``
its weights are the interpolation ``base + s (tuned - base)`` (so 0 is the base model and 1 the tuned one).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml

from bapo.errors import ConfigError
from bapo.core.logprobs import model_dtype
from bapo.runtime.models import fingerprint, peft_wrapping

# BAPO settings named in an adapter's label only when they differ from these defaults.
_BAPO_DEFAULTS = (("anchor_lambda", 1.0), ("anchor", "hinge"), ("anchor_reduction", "sum"))
_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# An adapter's record without its weights: its directory (config, run.json, held-out pairs) with the weights' digest
# in this file in place of the weights. Evaluation scores are cached under that digest, so a record still finds its
# scores (a long study carried to another machine: studies/carry.py); anything that needs the weights says so.
WEIGHTS_DIGEST = "adapter_model.digest"


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter directory: its path, the method that trained it (from its ``config.yaml``), a digest of its
    weights, and the fingerprint of the model it was trained from (from ``run.json``; empty when unknown)."""

    path: Path
    method: str
    digest: str
    model_fingerprint: str
    full: bool = False  # a whole fine-tuned model directory rather than a PEFT adapter


def read_adapter(path: str | Path) -> AdapterInfo:
    """Identify an adapter directory; raise a clear error when it is not one."""
    path = Path(path)
    full = is_full_model(path)
    if not (path / "adapter_config.json").exists() and not full:
        raise ConfigError(f"--adapters {path}: not an adapter directory (no adapter_config.json) nor a model "
                          f"directory (config.json and model.safetensors)")
    record = is_record(path)
    h = hashlib.sha256()
    if full:
        h.update(fingerprint(path).encode())
    for name in ("adapter_config.json", *_WEIGHTS):
        if (path / name).exists():
            h.update((path / name).read_bytes())
    digest = (path / WEIGHTS_DIGEST).read_text().strip() if record else h.hexdigest()[:16]
    method = "adapter"
    if (path / "config.yaml").exists():
        loss = (yaml.safe_load((path / "config.yaml").read_text()) or {}).get("loss", {})
        method = loss.get("method", method)
        if method == "bapo":
            extras = [f"{k}={loss[k]}" for k, d in _BAPO_DEFAULTS if loss.get(k, d) != d]
            method = "bapo" + (f"({', '.join(extras)})" if extras else "")
    fp = ""
    if (path / "run.json").exists():
        fp = json.loads((path / "run.json").read_text()).get("model_fingerprint") or ""
    return AdapterInfo(path, method + (" (full)" if full else ""), digest, fp, full)


def is_record(path: Path) -> bool:
    """Whether ``path`` is an adapter's record without its weights (``WEIGHTS_DIGEST`` in their place)."""
    return (path / WEIGHTS_DIGEST).exists() and not any((path / name).exists() for name in _WEIGHTS)


def is_full_model(path: Path) -> bool:
    """Whether ``path`` holds a whole fine-tuned model (``bapo train --finetune full``) rather than an adapter."""
    return not (path / "adapter_config.json").exists() and (path / "config.json").exists() and \
        any((path / n).exists() for n in ("model.safetensors", "model.safetensors.index.json"))


def check_same_model(info: AdapterInfo, fingerprint: str) -> None:
    """Refuse an adapter trained on another model than the one loaded."""
    if info.model_fingerprint and info.model_fingerprint != fingerprint:
        raise ConfigError(f"--adapters {info.path}: trained on a different model (fingerprint {info.model_fingerprint}, "
                          f"--model has {fingerprint})")


@contextmanager
def applied(model, adapter: str | Path | None, scale: float = 1.0, merge: bool = True) -> Iterator[Any]:
    """``model`` with the adapter applied at ``scale``; afterwards ``model`` is exactly as before.

    With ``merge`` the LoRA update is added into the weights it changes (scoring then costs what the base model
    costs; docs/PERFORMANCE.md has the measured gain), and the original weights, kept aside, are copied back
    afterwards. peft's own ``unmerge_adapter`` would subtract the update again, which leaves float rounding in
    the base weights and so makes each adapter's scores depend on which adapters were evaluated before it.
    """
    if adapter is None:
        yield model
        return
    if is_record(Path(adapter)):
        raise ConfigError(f"{adapter}: only a record of this adapter is here, its weights are not "
                          f"({WEIGHTS_DIGEST} in their place): its cached scores can be read, but this needs the "
                          "weights; train it again (remove the folder) or copy the adapter here")
    if is_full_model(Path(adapter)):  # a file check, not read_adapter: that hashes the weights
        with interpolated(model, Path(adapter), scale) as tuned:
            yield tuned
        return
    from peft import PeftModel
    from peft.helpers import rescale_adapter_scale
    from peft.tuners.lora import LoraLayer

    # In a 16-bit dtype the merged weight W + s*BA is rounded to 8 significant bits, which drops much of an update
    # that is small against W (a lightly trained adapter's): the adapter stays a separate branch there, in the
    # model's own dtype (B(Ax) rounds relative to the update itself, not to W). peft's default float32 branch cast
    # every layer's input up and its sum back down: generation with an adapter ran 1.7-2x slower than the base
    # model in bfloat16 (2026-12-05).
    sixteen_bit = model_dtype(model) != torch.float32
    with peft_wrapping():
        peft_model = PeftModel.from_pretrained(model, str(adapter), autocast_adapter_dtype=not sixteen_bit).eval()
    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    merge = merge and not sixteen_bit
    saved = [m.get_base_layer().weight.detach().clone() for m in layers] if merge else []
    try:
        with rescale_adapter_scale(peft_model, scale):
            if merge:
                peft_model.merge_adapter()
            yield peft_model
    finally:
        for m, w in zip(layers, saved):
            m.get_base_layer().weight.data.copy_(w)
        peft_model.unload()  # back to the plain base model (its weights restored above, not unmerged)


@contextmanager
def interpolated(model, tuned_dir: Path, scale: float) -> Iterator[Any]:
    """``model`` with every weight at ``base + scale * (tuned - base)``, the tuned weights read from a fully
    fine-tuned model directory; the base weights are copied back exactly afterwards."""
    from transformers import AutoModelForCausalLM

    tuned = AutoModelForCausalLM.from_pretrained(tuned_dir, dtype=torch.float32).state_dict()
    params = dict(model.named_parameters())
    saved = {n: p.detach().clone() for n, p in params.items() if n in tuned}
    try:
        with torch.no_grad():
            for n, base in saved.items():
                target = tuned[n].to(base.device, torch.float32)
                params[n].copy_((base.float() + scale * (target - base.float())).to(base.dtype))
        yield model
    finally:
        with torch.no_grad():
            for n, base in saved.items():
                params[n].copy_(base)
