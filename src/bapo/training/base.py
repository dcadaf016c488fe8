"""``bapo base``: the reference step alone. The reference model answers every prompt of a pair file and scores
chosen, rejected and base responses; everything is cached, and the result is written as one JSONL file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bapo.core.tokens import encode_pairs
from bapo.data.config import renderer
from bapo.data.pairs import load_pairs
from bapo.io import write_jsonl
from bapo.runtime import distributed
from bapo.runtime.models import load_tokenizer, resolve_model
from bapo.runtime.reference import build_examples, load_reference
from bapo.training.config import BaseRunConfig


@dataclass
class BaseResult:
    """Where the base responses went, and for how many pairs and distinct prompts."""

    out: Path
    pairs: int
    prompts: int


def base_responses(cfg: BaseRunConfig) -> BaseResult:
    """Base responses and reference log-probs for every pair of ``cfg.data.path``; the Python twin of ``bapo base``."""
    cfg.validate()
    pairs = load_pairs(cfg.data.path, cfg.data.split, cfg.data.user)
    path = resolve_model(cfg.model, cfg.cache_dir)
    render = renderer(load_tokenizer(path), cfg.data)
    encoded = encode_pairs(pairs, render)  # every problem reported before the model is loaded
    ref = load_reference(path, render, cfg.cache_dir, cfg.device, cfg.dtype, cfg.engine)
    examples = build_examples(ref, pairs, encoded, cfg.generation, with_base=True)
    if not distributed.is_main():  # under torchrun each process made a share; the main one writes the whole
        return BaseResult(Path(cfg.out), len(pairs), len({p.prompt_key for p in pairs}))
    write_jsonl(cfg.out, [
        {**p.to_record(), "base_responses": e.base_texts, "ref_logps": {
            "chosen": e.ref_chosen, "rejected": e.ref_rejected, "base": e.ref_base}}
        for p, e in zip(pairs, examples)])
    return BaseResult(Path(cfg.out), len(pairs), len({p.prompt_key for p in pairs}))
