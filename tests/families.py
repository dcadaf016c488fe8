"""Tiny random-weight models of the families users bring, each with its family's chat format and special tokens.

Every model here is 2 layers of hidden size 32 over a character-level vocabulary (one token per character, so a short
conversation is a long sequence), with a sliding window of ``WINDOW`` tokens where the family has one: shorter than
every test sequence, so a mask that ignores the window gives other numbers.

The chat templates are written for these tests after each family's documented chat format (the model cards' and
tokenizer configs' published formats: Llama 3's header tokens, ChatML for Qwen, ``[INST]`` for Mistral,
``<start_of_turn>`` for Gemma, ``<|user|>`` for Phi-3 and OLMo 2). They are not copies of the published templates,
which carry each model's license; they keep the behaviours that matter to bapo: whether a BOS is written by the
template, whether a system role exists (Gemma 2 and Mistral v0.1 raise on one; Gemma 3 folds it into the first user
turn), Qwen 3's empty ``<think>`` block, and Mistral v0.3's system text moved into the last user turn.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path

WINDOW = 8

LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
QWEN2 = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
         "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN3 = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}<think>\n\n</think>\n\n"
         "{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
         "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %}{{ m['content'] }}{{ eos_token }}"
           "{% endif %}{% endfor %}")
# Mistral v0.3's way with a system message: its text goes into the *last* user turn, so a conversation with an
# answer does not start with the prompt rendered without one.
MISTRAL_V3 = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
              "{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}"
              "{% for m in msgs %}{% if m['role'] == 'user' %}[INST] {% if sys and loop.last %}{{ sys }}\n\n{% endif %}"
              "{{ m['content'] }} [/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
GEMMA2 = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
          "{% endif %}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
          "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n"
          "{% endif %}")
GEMMA3 = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
          "{% set msgs = messages[1:] %}{% else %}{% set first = '' %}{% set msgs = messages %}{% endif %}"
          "{% for m in msgs %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
          "{% if loop.first %}{{ first }}{% endif %}{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
          "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
PHI3 = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}")
OLMO2 = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% if m['role'] == 'assistant' %}"
         "{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@dataclass(frozen=True)
class Family:
    name: str
    config: str  # transformers config class
    model: str  # transformers causal-LM class
    template: str
    specials: tuple[str, ...]
    eos: str
    bos: str | None = None
    adds_bos: bool = False  # the tokenizer puts BOS before any text it encodes with special tokens
    kwargs: dict = field(default_factory=dict)
    system_role: bool = True
    windowed: bool = True
    # AutoTokenizer loads Qwen's own tokenizer class (by the model type), which reads byte-level tokens: a space in the
    # vocabulary must be written "Ġ"
    byte_level: bool = False


FAMILIES = {f.name: f for f in [
    Family("llama3", "LlamaConfig", "LlamaForCausalLM", LLAMA3,
           ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>",
           "<|begin_of_text|>", adds_bos=True, windowed=False),
    Family("qwen2.5", "Qwen2Config", "Qwen2ForCausalLM", QWEN2, ("<|im_start|>", "<|im_end|>"), "<|im_end|>",
           byte_level=True, kwargs=dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)),
    Family("qwen3", "Qwen3Config", "Qwen3ForCausalLM", QWEN3, ("<|im_start|>", "<|im_end|>", "<think>", "</think>"),
           "<|im_end|>", byte_level=True, kwargs=dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1, head_dim=8)),
    Family("mistral", "MistralConfig", "MistralForCausalLM", MISTRAL, ("<s>", "</s>", "[INST]", "[/INST]"), "</s>",
           "<s>", adds_bos=True, kwargs=dict(sliding_window=WINDOW), system_role=False),
    Family("gemma2", "Gemma2Config", "Gemma2ForCausalLM", GEMMA2, ("<bos>", "<eos>", "<start_of_turn>",
                                                                    "<end_of_turn>"), "<end_of_turn>", "<bos>",
           adds_bos=True, kwargs=dict(sliding_window=WINDOW, head_dim=8, query_pre_attn_scalar=8,
                                      layer_types=["sliding_attention", "full_attention"]), system_role=False),
    Family("gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM", GEMMA3, ("<bos>", "<eos>", "<start_of_turn>",
                                                                        "<end_of_turn>"), "<end_of_turn>", "<bos>",
           adds_bos=True, kwargs=dict(sliding_window=WINDOW, head_dim=8, query_pre_attn_scalar=8,
                                      layer_types=["sliding_attention", "full_attention"])),
    Family("phi3", "Phi3Config", "Phi3ForCausalLM", PHI3, ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>",
                                                            "<|endoftext|>"), "<|end|>",
           kwargs=dict(sliding_window=WINDOW)),
    Family("olmo2", "Olmo2Config", "Olmo2ForCausalLM", OLMO2, ("<|endoftext|>", "<|user|>", "<|assistant|>",
                                                                "<|system|>"), "<|endoftext|>", "<|endoftext|>",
           windowed=False),
]}


def build_family_model(family: str, path: Path, seed: int = 0, template: str | None = None,
                       head_dim: int = 8, **overrides) -> Path:
    """Save a tiny random model of ``family`` and its tokenizer (with the family's chat format) to ``path``: 4 heads
    of ``head_dim`` (vLLM's CPU attention takes 32 and up, benchmarks/vllm_check.py); ``overrides`` set config fields."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    f = FAMILIES[family]
    specials = ["<pad>", "<unk>", *dict.fromkeys(f.specials)]
    chars = sorted(set(string.printable))
    if f.byte_level:  # GPT-2's byte-to-character map: a space is "Ġ", a newline "Ċ"
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        byte_char = bytes_to_unicode()
        chars = [byte_char[ord(c)] for c in chars]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))  # one token per character
    tk.add_special_tokens(specials)
    if f.byte_level:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
    else:
        tk.decoder = decoders.Fuse()
    if f.adds_bos:
        tk.post_processor = processors.TemplateProcessing(single=f"{f.bos} $A", pair=f"{f.bos} $A $B",
                                                          special_tokens=[(f.bos, vocab[f.bos])])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token=f.eos,
                                  bos_token=f.bos, clean_up_tokenization_spaces=False)
    tok.chat_template = template or f.template
    torch.manual_seed(seed)
    kwargs = {**f.kwargs, **({"head_dim": head_dim} if "head_dim" in f.kwargs else {}),
              **({"query_pre_attn_scalar": head_dim} if "query_pre_attn_scalar" in f.kwargs else {}), **overrides}
    cfg = getattr(transformers, f.config)(**{
        **dict(vocab_size=len(vocab), hidden_size=4 * head_dim, intermediate_size=8 * head_dim, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
               eos_token_id=vocab[f.eos], pad_token_id=vocab["<pad>"], bos_token_id=vocab[f.bos] if f.bos else None),
        **kwargs})
    model = getattr(transformers, f.model)(cfg)
    model.generation_config.eos_token_id = vocab[f.eos]
    model.generation_config.pad_token_id = vocab["<pad>"]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
