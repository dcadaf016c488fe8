"""Test helpers: a tiny randomly initialised chat model (character-level tokenizer, built in seconds), a simulated
user's pairs, and where the shared data sets live."""

from __future__ import annotations

import json
import socket
import string
import threading
import time
from contextlib import contextmanager
from pathlib import Path


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPECIALS = ["<pad>", "<unk>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def build_tiny_model(path: Path, chat: bool = True, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = sorted(set(string.printable))
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))  # no merges: one token per character
    tk.add_special_tokens(SPECIALS)
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="<|end|>",
                                  clean_up_tokenization_spaces=False)
    if chat:
        tok.chat_template = TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=False, eos_token_id=vocab["<|end|>"], pad_token_id=vocab["<pad>"],
                      bos_token_id=None)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = vocab["<|end|>"]
    model.generation_config.pad_token_id = vocab["<pad>"]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_pairs(n_prompts: int = 12, per_prompt: int = 2, user: str | None = None) -> list[dict]:
    """A simulated user who prefers answers in a bullet list."""
    rows = []
    for i in range(n_prompts):
        for j in range(per_prompt):
            row = {"prompt": f"Question {i} variant {j}?" if per_prompt > 1 else f"Question {i}?",
                   "chosen": f"- point {i}\n- point {j}", "rejected": f"Point {i} and point {j}."}
            if user:
                row["user_id"] = user
            rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(cfg):
    """``bapo serve`` with ``cfg`` (a ServeConfig) on a real uvicorn server in a thread: yields (app, engine)."""
    import uvicorn

    from bapo.serve.server import build

    app, engine = build(cfg)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=cfg.port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    try:
        yield app, engine
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        engine.close()


def moved_lora(model_dir: str, seed: int, std: float = 0.05, r: int = 4, dtype: str = "float32"):
    """The model with a LoRA adapter moved off zero (its B matrices drawn with ``std``, seeded): the policy differs
    from the reference, so every term of a loss is live, and a large ``std`` makes answers differ visibly."""
    import torch

    from bapo.runtime.config import LoraSettings
    from bapo.runtime.models import add_lora, load_model

    torch.manual_seed(seed)
    model = add_lora(load_model(model_dir, "cpu", dtype), LoraSettings(r=r))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, std)
    return model


def make_adapter(model_dir: str, out: Path, seed: int = 0, std: float = 0.3) -> Path:
    """A strong random LoRA adapter saved as a standard PEFT folder: its answers differ from the base model's."""
    moved_lora(model_dir, seed, std).save_pretrained(out)
    return out


def screenshot(page: Path, tmp_path: Path, size: tuple[int, int] = (1200, 1600)):
    """``page`` rendered by headless Chromium (callers skip where it is missing), as an image array."""
    import subprocess

    import matplotlib.image as mpimg

    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}",
                    f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}", f"file://{page}"],
                   check=True, capture_output=True, timeout=120)
    return mpimg.imread(shot)


def tiny_study(tmp_path: Path, tiny_model: str, suite: str):
    """A study of a dpo and a bapo cell (random adapters with held-out pairs), DPO also at scale 0.5."""
    from bapo.options import dump_yaml
    from bapo.studies.config import StudyConfig
    from bapo.studies.plan import cell_dir, plan
    from bapo.training.config import TrainConfig

    cfg = StudyConfig(users=["flip:0.5"], methods=["dpo", "bapo"], seeds=1, out=str(tmp_path / "s"),
                      frontier_scales=[0.5], train=TrainConfig(model=tiny_model, device="cpu", dtype="float32"))
    out = tmp_path / "s"
    out.mkdir()
    (out / "suite.yaml").write_text(suite)
    for i, cell in enumerate(plan(cfg)):
        d = make_adapter(tiny_model, cell_dir(out, cell), seed=i)
        (d / "config.yaml").write_text(dump_yaml(cfg.train))
        write_jsonl(d / "holdout.jsonl", [{"prompt": f"Say {w}.", "chosen": w, "rejected": w[::-1] + " no",
                                           "user_id": "u"} for w in ("yes", "sure", "fine")])
        (d / "run.json").write_text("{}")
    return cfg, plan(cfg)
