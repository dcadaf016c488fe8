"""``bapo serve``: load the base model once, put the adapter pool and the batching engine over it, and listen."""

from __future__ import annotations

from pathlib import Path

import uvicorn

from bapo.core.tokens import Renderer
from bapo.errors import ConfigError
from bapo.runtime.models import load_model, load_tokenizer, resolve_model
from bapo.serve.app import create_app
from bapo.serve.config import ServeConfig
from bapo.serve.engine import Engine
from bapo.serve.keys import load_keys
from bapo.serve.pool import AdapterPool


def base_name(model: str) -> str:
    """The base model's id in the API: the name it was given, or a local directory's folder name."""
    return Path(model).name if ("/" in model and Path(model).exists()) else model


def build(cfg: ServeConfig):
    """The FastAPI app and its engine for ``cfg`` (the model loaded), without listening: tests and ``serve`` use it."""
    cfg.validate()
    if not Path(cfg.adapters).is_dir():
        raise ConfigError(f"adapters: {cfg.adapters} is not a directory")
    keys = load_keys(cfg.keys) if cfg.keys else None  # before the model loads: a bad file fails at once
    path = resolve_model(cfg.model, cfg.cache_dir)
    tok = load_tokenizer(path)
    model = load_model(path, cfg.device, cfg.dtype)
    pool = AdapterPool(model, cfg.adapters, cfg.max_adapters)
    renderer = Renderer(tok, cfg.max_prompt_length + cfg.max_tokens, cfg.max_prompt_length)
    engine = Engine(pool, tok, renderer, cfg.max_batch, cfg.batch_wait_ms / 1000)
    return create_app(cfg, engine, pool, base_name(cfg.model), keys), engine


def serve(cfg: ServeConfig) -> None:
    """Serve until interrupted."""
    app, engine = build(cfg)
    names = ", ".join(engine.pool.names()) or "none yet"
    print(f"bapo serve: {base_name(cfg.model)} and its adapters ({names}) at http://{cfg.host}:{cfg.port}/v1",
          flush=True)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    finally:
        engine.close()
