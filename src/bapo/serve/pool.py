"""The adapters a server has loaded over its one base model: found by name inside the adapters folder, loaded on
first use into an LRU pool of at most ``max_adapters`` (peft adapters side by side in one model), each also at any
scale a request asks for (a scaled copy: the same weights with the LoRA scale multiplied)."""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from bapo.core.logprobs import model_dtype
from bapo.runtime.models import peft_wrapping
from bapo.serve.config import ADAPTER_NAME


class ModelNotFound(LookupError):
    """No adapter of that name is served."""


class AdapterLoadError(RuntimeError):
    """An adapter folder exists but could not be loaded."""


BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class Loaded:
    """A loaded adapter at one scale: its folder's name, and the file state it was loaded from."""

    name: str
    stamp: float


class AdapterPool:
    """Adapters from ``root``, loaded into ``model`` on demand, at most ``capacity`` at a time.

    Not thread-safe: the engine's one worker thread is its only user (it loads what a batch needs, then runs it).
    """

    def __init__(self, model, root: str | Path, capacity: int):
        self.base = model
        self.model: PeftModel | None = None
        self.root = Path(root).resolve()
        self.capacity = capacity
        self.loaded: OrderedDict[str, Loaded] = OrderedDict()  # peft adapter name -> what it holds, oldest first

    def names(self) -> list[str]:
        """Every adapter folder under the root now (adapters added after start included)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if ADAPTER_NAME.match(p.name) and self._inside(p)
                      and (p / "adapter_config.json").is_file())

    def path(self, name: str) -> Path:
        """The folder of adapter ``name``; :class:`ModelNotFound` for a bad name, a path outside the root (``..``,
        absolute, a symlink out), or a folder that holds no adapter."""
        if not ADAPTER_NAME.match(name):
            raise ModelNotFound(name)
        p = self.root / name
        if not self._inside(p) or not (p / "adapter_config.json").is_file():
            raise ModelNotFound(name)
        return p

    def _inside(self, p: Path) -> bool:
        try:
            return p.resolve().is_relative_to(self.root) and p.resolve() != self.root
        except OSError:
            return False

    def acquire(self, name: str, scale: float, keep: set[str]) -> str:
        """The peft adapter name for ``name`` at ``scale``, loading it first if needed; ``keep`` are keys a batch
        in progress uses (never evicted for this one)."""
        path = self.path(name)
        key = _key(name, scale)
        stamp = _stamp(path)
        held = self.loaded.get(key)
        if held is not None and held.stamp == stamp:
            self.loaded.move_to_end(key)
            return key
        if held is not None:  # the folder was retrained or replaced: load it afresh
            self._drop(key)
        self._make_room(keep | {key})
        # In a 16-bit model the adapters compute in its dtype, as in bapo.runtime.adapters.applied: peft's float32
        # branch would cast every layer's input up and back for every generated token.
        upcast = model_dtype(self.base) == torch.float32
        try:
            if self.model is None:
                with peft_wrapping():
                    self.model = PeftModel.from_pretrained(self.base, str(path), adapter_name=key,
                                                           autocast_adapter_dtype=upcast).eval()
            else:
                self.model.load_adapter(str(path), adapter_name=key, autocast_adapter_dtype=upcast)
        except Exception as e:  # peft and safetensors raise many types for a damaged adapter
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AdapterLoadError(f"adapter '{name}' could not be loaded: {first}") from None
        if scale != 1.0:
            for m in self.model.modules():
                if isinstance(m, LoraLayer) and key in m.scaling:
                    m.set_scale(key, scale)
        self.loaded[key] = Loaded(name, stamp)
        return key

    def forget(self, name: str) -> None:
        """Unload every scale of adapter ``name`` (its folder is gone)."""
        for key in [k for k, held in self.loaded.items() if held.name == name]:
            self._drop(key)

    def _make_room(self, keep: set[str]) -> None:
        for key in list(self.loaded):  # oldest first
            if len(self.loaded) < self.capacity:
                return
            if key not in keep:
                self._drop(key)

    def _drop(self, key: str) -> None:
        if len(self.loaded) > 1:
            with warnings.catch_warnings():  # "... was active": no matter, every batch names each row's adapter
                warnings.simplefilter("ignore", UserWarning)
                self.model.delete_adapter(key)
            del self.loaded[key]
        else:  # peft keeps at least one adapter in its wrapper: take the whole wrapper off the base model
            self.base = self.model.unload()
            self.model = None
            self.loaded.clear()

    @property
    def current(self):
        """The model to run: the peft wrapper when any adapter is loaded, else the base model."""
        return self.model if self.model is not None else self.base


def _stamp(path: Path) -> float:
    files = [path / n for n in ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json")]
    return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)


def _key(name: str, scale: float) -> str:
    """The adapter's name inside peft (a module name: no dots), one per (folder, scale)."""
    return "u_" + hashlib.sha256(f"{name}@{scale!r}".encode()).hexdigest()[:16]
