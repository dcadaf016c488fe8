"""Every model family users bring, on tiny random models (tests/families.py): scoring with a sliding window shorter
than the sequences, the chat formats (one BOS, no system role, Qwen 3's thinking, a template that moves the system
text), an exact anchor at step 0 in both dtypes and both reference modes, and train -> eval -> export -> serve."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

import bapo
from bapo.core.logprobs import pad_batch, score, sequence_logps
from bapo.core.tokens import Renderer
from bapo.data.config import DataConfig
from bapo.data.pairs import prompt_messages
from bapo.evaluation.config import EvalConfig
from bapo.runtime.models import load_model, load_tokenizer
from bapo.training.config import TrainConfig
from tests.families import FAMILIES, MISTRAL_V3, WINDOW, build_family_model
from tests.helpers import make_pairs, write_jsonl

NAMES = sorted(FAMILIES)
CONVERSATIONS = [([{"role": "user", "content": "What is the capital of France, please?"}], "Paris is the capital."),
                 ([{"role": "user", "content": "Name a color you like."}], "Blue, like the sky at noon.")]
SYSTEM = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}]
# bfloat16: packed and plain forwards round differently (other shapes, other kernels); the largest difference seen
# on these ~80-token sequences was 1.6e-3 nats (Phi-3 layout, 2026-12-06); ignoring the window costs 0.035-0.63.
BF16_BOUND = 1e-2


def encoded(path: str, **kw):
    tok = load_tokenizer(path)
    render = Renderer(tok, 512, 256, **kw)
    seqs, problems = [], []
    for messages, answer in CONVERSATIONS:
        seqs.append(render.encode(messages, answer, "x", "chosen", problems))
        seqs.append(render.encode(messages, answer[::-1], "x", "rejected", problems))
    assert not problems
    return tok, render, seqs


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", NAMES)
def test_packed_and_unpacked_scoring_equal_a_plain_forward_with_a_short_window(family_dir, name, dtype):
    path = family_dir(name)
    tok, _, seqs = encoded(path)
    model = load_model(path, "cpu", dtype)
    if FAMILIES[name].windowed:
        assert model.config.sliding_window == WINDOW and min(len(s.ids) for s in seqs) > 4 * WINDOW
    with torch.no_grad():  # transformers' own masks, window included, from a padded batch
        plain = sequence_logps(model, pad_batch(seqs, tok.pad_token_id), fast=False)[0].tolist()
    bound = 1e-4 if dtype == "float32" else BF16_BOUND
    for pack in (True, False):
        got = [v for v, _ in score(model, seqs, tok.pad_token_id, batch_size=4, pack=pack)]
        assert max(abs(a - b) for a, b in zip(got, plain)) < bound, (pack, got, plain)


@pytest.mark.parametrize("name", NAMES)
def test_one_bos_and_plain_prompts_equal_message_prompts(family_dir, name):
    f = FAMILIES[name]
    tok, render, seqs = encoded(family_dir(name))
    question, answer = CONVERSATIONS[0][0][0]["content"], CONVERSATIONS[0][1]
    as_string = render.encode([{"role": r, "content": c} for r, c in prompt_messages(question)], answer, "x", "c", [])
    assert as_string == seqs[0]
    if f.bos:
        bos = tok.convert_tokens_to_ids(f.bos)
        assert seqs[0].prompt[0] == bos and seqs[0].prompt[1] != bos and seqs[0].prompt.count(bos) == 1
    assert tok.decode(seqs[0].response).startswith(answer)


@pytest.mark.parametrize("name", NAMES)
def test_a_system_message_is_folded_where_the_template_has_no_system_role(family_dir, name):
    _, render, _ = encoded(family_dir(name))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = render.encode(SYSTEM, "Green.", "x", "c", [])
        again = render.encode(SYSTEM, "Red.", "x", "c", [])
    notes = [str(w.message) for w in caught if "system role" in str(w.message)]
    assert first is not None and again is not None
    if FAMILIES[name].system_role:
        assert not notes and not render.fold_system
        return
    assert len(notes) == 1 and "folded into the first user turn" in notes[0]  # once, not per record
    folded = [{"role": "user", "content": "Be brief.\n\nName a color."}]
    assert first == render.encode(folded, "Green.", "x", "c", [])


def test_a_template_that_moves_the_system_text_is_noted_once_naming_the_model(tmp_path):
    path = str(build_family_model("mistral", tmp_path / "mistral-v3", template=MISTRAL_V3))
    render = Renderer(load_tokenizer(path), 512, 256)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = [render.encode(SYSTEM, a, "x", "c", []) for a in ("Green.", "Red.")]
    notes = [str(w.message) for w in caught if "does not render" in str(w.message)]
    assert len(notes) == 1 and path in notes[0]
    assert render.tok.decode(enc[0].response) == "Green.</s>"


def test_qwen3_thinking_is_off_by_default_and_passed_to_the_template(family_dir):
    path = family_dir("qwen3")
    off = encoded(path)[2][0]
    on = encoded(path, enable_thinking=True)[2][0]
    tok = load_tokenizer(path)
    assert "<think>" in tok.decode(off.prompt) and "<think>" not in tok.decode(off.response)
    assert "<think>" in tok.decode(on.response)  # with thinking on, the empty block is scored as part of the answer


def train_family(path: str, root, dtype: str, mode: str, steps: int = 2):
    data = root / "pairs.jsonl"
    if not data.exists():
        write_jsonl(data, make_pairs(8, 2))
    cfg = TrainConfig(model=path, out=str(root / f"{dtype}-{mode}"), data=DataConfig(path=str(data), holdout=0.25),
                      max_steps=steps, batch_size=2, lr=5e-3, dtype=dtype, reference_logps=mode, logging_steps=1,
                      cache_dir=str(root / "cache"))
    cfg.base.max_new_tokens = 12
    out = bapo.train(cfg).out
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return out, [r for r in rows if "loss/anchor" in r]


@pytest.mark.parametrize("name", NAMES)
def test_the_anchor_is_exactly_zero_at_step_0_in_both_dtypes_and_reference_modes(family_dir, name, tmp_path):
    for dtype in ("float32", "bfloat16"):
        for mode in ("in-batch", "cached"):
            out, rows = train_family(family_dir(name), tmp_path, dtype, mode, steps=1)
            assert rows[0]["loss/anchor"] == 0.0, (dtype, mode, rows[0])
            if mode == "in-batch":  # the reference is the policy with its adapter off, in the same batch
                assert rows[0]["anchor/gap"] == 0.0, (dtype, rows[0])
            run = json.loads((out / "run.json").read_text())
            assert run["reference_logps"] == mode and run["chat_template"]["enable_thinking"] is False


@pytest.mark.parametrize("name", NAMES)
def test_train_eval_export_and_serve(family_dir, name, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from bapo.runtime.adapters import applied
    from bapo.runtime.export import export_adapter

    path = family_dir(name)
    out, _ = train_family(path, tmp_path, "float32", "in-batch", steps=3)

    # eval: the base model scores a margin of exactly 0 against itself; the adapter moved
    (tmp_path / "suite.yaml").write_text("tasks:\n  - {name: drift, kind: drift, path: package:general_prompts.jsonl, "
                                         "limit: 3, max_new_tokens: 12}\n")
    records = bapo.evaluate(EvalConfig(model=path, adapters=[str(out)], suite=str(tmp_path / "suite.yaml"),
                                       out=str(tmp_path / "res"), cache_dir=str(tmp_path / "cache"),
                                       device="cpu", dtype="float32")).records
    by = {(r.model, r.kind, r.metric): r.value for r in records}
    assert by[("base", "personal", "margin")] == 0.0 and by[("base", "drift", "logp_change_per_token")] == 0.0
    assert by[("base", "personal", "reward_acc")] == 0.5 and by[(out.name, "personal", "margin")] != 0.0

    # export at half scale: plain transformers + PEFT give bapo's own logits on a sequence longer than the window
    half = export_adapter(out, tmp_path / "half", 0.5).out
    ids = torch.tensor([list(range(10, 10 + 5 * WINDOW))])
    with torch.no_grad():
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), str(half)).eval()
        got = plain(input_ids=ids).logits
        with applied(load_model(path, "cpu", "float32"), out, 0.5, merge=False) as m:
            want = m(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()

    # serve: the adapter answers through the real server what it answers alone
    openai = pytest.importorskip("openai")
    from bapo.runtime.generate import generate_answers
    from bapo.serve.config import ServeConfig
    from tests.helpers import free_port, serving

    shutil.copytree(out, tmp_path / "adapters" / "alice")
    cfg = ServeConfig(model=path, adapters=str(tmp_path / "adapters"), port=free_port(), device="cpu",
                      dtype="float32", max_tokens=16)
    question = CONVERSATIONS[0][0]
    with applied(load_model(path, "cpu", "float32"), out, 1.0, merge=False) as m:
        alone = generate_answers(m, Renderer(load_tokenizer(path), 512, 256), [question], 10, batch_size=1)[0]
    with serving(cfg):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{cfg.port}/v1", api_key="x", max_retries=0)
        r = client.chat.completions.create(model="alice", messages=question, temperature=0, max_tokens=10)
    # cut at max_tokens, the server keeps the text as generated so far (trailing whitespace included, as it streamed)
    # where local generation strips it
    answer = r.choices[0].message.content
    assert (answer.rstrip() if r.choices[0].finish_reason == "length" else answer) == alone


def test_the_fold_is_one_note_on_the_command_line(family_dir, tmp_path):
    from tests.test_cli_usage import script

    data = write_jsonl(tmp_path / "sys.jsonl", [{"prompt": SYSTEM, "chosen": f"Green {i}.", "rejected": "No."}
                                                for i in range(3)])
    r = script("validate", "--data", str(data), "--model", family_dir("gemma2"))
    said = r.stdout + r.stderr
    assert r.returncode == 0 and "UserWarning" not in said, said
    assert [line for line in said.splitlines() if line.startswith("note:")] == [
        line for line in said.splitlines() if "folded into the first user turn" in line] and said.count("note:") == 1


def test_a_conversation_the_template_refuses_is_one_line_naming_file_line_and_field(family_dir, tmp_path):
    from tests.test_cli_usage import script

    twice = [{"role": "user", "content": "Hi?"}, {"role": "user", "content": "Again?"}]
    data = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": twice, "chosen": "A.", "rejected": "B."}])
    r = script("validate", "--data", str(data), "--model", family_dir("mistral"))
    lines = [x for x in (r.stdout + r.stderr).splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and f"{data}:1: prompt: the chat template" in lines[0], lines
