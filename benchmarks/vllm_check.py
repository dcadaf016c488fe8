"""Does vLLM load what `bapo export` writes, and answer as transformers + PEFT do? (benchmarks/vllm_check.sh runs it.)

    python benchmarks/vllm_check.py prepare FAMILY DIR    # bapo's env: the model, two adapters, the expected answers
    python benchmarks/vllm_check.py compare DIR           # bapo's env: vLLM's answers (DIR/got.json) against them

FAMILY is one of tests/families.py's tiny models, or `smollm2` (the embedded SmolLM2-135M-Instruct). `prepare`
writes DIR/model (`bapo export model`), DIR/a (an adapter at scale 1) and DIR/b (the same adapter exported at scale
0.5, `bapo export adapter --scale 0.5`), and DIR/expected.json: greedy answers of 48 new tokens to 6 prompts from the
base model and both adapters with plain transformers + PEFT in float32. The served side (vllm_check.sh) asks vLLM's
OpenAI server the same and writes DIR/got.json; `compare` prints both and how many agree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["What is the capital of France?", "Name three colors.", "Why is the sky blue?",
           "Write a haiku about tea.", "How many legs does a spider have?", "Give me a tip for sleeping well."]
NEW_TOKENS = 48
# Qwen's published configs leave sliding windows off (use_sliding_window: false), and vLLM refuses the layout the
# tests use, a window on some layers only ("Sliding window for some but all layers is not supported").
# Gemma 2 ties its output head to its embeddings, and vLLM's Gemma 2 has no separate head to load one into.
PUBLISHED = {"qwen2.5": {"use_sliding_window": False}, "qwen3": {"use_sliding_window": False},
             "gemma2": {"tie_word_embeddings": True}}


def greedy(model, tok, prompt: str) -> str:
    import torch

    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def prepare(family: str, out: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bapo.runtime.export import export_adapter, export_model
    from tests.families import build_family_model
    from tests.helpers import make_adapter

    out.mkdir(parents=True, exist_ok=True)
    source = "smollm2-135m-instruct" if family == "smollm2" else str(build_family_model(family, out / "source", head_dim=64, **PUBLISHED.get(family, {})))
    model_dir = export_model(source, out / "model").out
    make_adapter(str(model_dir), out / "trained", seed=1, std=0.02 if family == "smollm2" else 0.3)
    export_adapter(out / "trained", out / "a", 1.0)
    export_adapter(out / "trained", out / "b", 0.5)
    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    answers = {}
    for name in ("base", "a", "b"):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        if name != "base":
            model = PeftModel.from_pretrained(model, str(out / name)).eval()
        answers[name] = [greedy(model, tok, p) for p in PROMPTS]
    (out / "expected.json").write_text(json.dumps({"family": family, "prompts": PROMPTS, "answers": answers},
                                                  indent=1))
    print(f"{family}: {out / 'expected.json'}")


def compare(out: Path) -> int:
    want = json.loads((out / "expected.json").read_text())
    got = json.loads((out / "got.json").read_text())
    same = total = 0
    for name, answers in want["answers"].items():
        for prompt, a, b in zip(want["prompts"], answers, got[name]):
            total += 1
            same += a.strip() == b.strip()
            if a.strip() != b.strip():
                print(f"  {name} | {prompt!r}\n    transformers+PEFT: {a!r}\n    vLLM:              {b!r}")
    print(f"{want['family']}: {same} of {total} greedy answers identical (transformers + PEFT against vLLM, "
          f"{NEW_TOKENS} tokens, float32)")
    return 0 if same == total else 1


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(sys.argv[2], Path(sys.argv[3]))
    else:
        sys.exit(compare(Path(sys.argv[2])))
