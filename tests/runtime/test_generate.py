"""Generation for evaluation: length-sorted batches, answers back in the prompts' order."""

from bapo.core.tokens import Renderer
from bapo.runtime import generate
from bapo.runtime.generate import generate_answers
from bapo.runtime.models import load_model, load_tokenizer

PROMPTS = [[{"role": "user", "content": text}] for text in
           ("Hi", "Tell me a long story about the sea and the ships on it", "Why?", "Name three colours of paint",
            "Ok", "Describe rain in one sentence please, with some detail")]


def test_answers_come_back_in_order_and_as_each_prompt_alone_gets_them(tiny_model, monkeypatch):
    tok = load_tokenizer(tiny_model)
    model = load_model(tiny_model, "cpu", "float32")
    renderer = Renderer(tok, 256, 128)
    alone = [generate_answers(model, renderer, [p], 5, batch_size=1)[0] for p in PROMPTS]
    batches = []
    real = generate.generate_batch

    def spy(model, tok, batch, cfg, stop, seed_key="0"):
        batches.append([len(ids) for ids in batch])
        return real(model, tok, batch, cfg, stop, seed_key)

    monkeypatch.setattr(generate, "generate_batch", spy)
    batched = generate_answers(model, renderer, PROMPTS, 5, batch_size=2)
    assert batched == alone  # float32: left padding changes no answer, and each lands at its prompt's index
    lengths = [n for b in batches for n in b]
    assert [len(b) for b in batches] == [2, 2, 2] and lengths == sorted(lengths)  # shortest prompts together
