"""Validated pairs -> token ids: the model's chat template, length limits, and the response boundary.

A sequence is ``prompt_ids + response_ids``; only response tokens are scored. The response is rendered the way the
chat template would close an assistant turn (for SmolLM2: ``text<|im_end|>\\n``), found as the difference between
the templated conversation with and without the response, as TRL does.
"""

from __future__ import annotations

from dataclasses import dataclass

from bapo.errors import DataError, Problem


@dataclass(frozen=True)
class Encoded:
    """One scored sequence: the prompt's ids and the response's ids (never empty)."""

    prompt: tuple[int, ...]
    response: tuple[int, ...]

    @property
    def ids(self) -> list[int]:
        return [*self.prompt, *self.response]


class Renderer:
    """Turns chat messages and responses into token ids under one tokenizer and one set of length limits."""

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int, truncate: bool = True):
        self.tok = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.truncate = truncate
        self.templated = bool(getattr(tokenizer, "chat_template", None))

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        if self.templated:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # No chat template (a base model): plain turns, the response follows on a new line.
        return "\n".join(m["content"] for m in messages) + "\n"

    def response_text(self, messages: list[dict[str, str]], response: str, prompt_text: str) -> str:
        if self.templated:
            full = self.tok.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
            if full.startswith(prompt_text):
                return full[len(prompt_text):]
        return response + (self.tok.eos_token or "")

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.tok(self.prompt_text(messages), add_special_tokens=not self.templated)["input_ids"]

    def encode(self, messages: list[dict[str, str]], response: str, where: str, field: str,
               problems: list[Problem], truncate: bool | None = None) -> Encoded | None:
        """Encode one (prompt, response); an over-long text is truncated or, with ``reject``, reported."""
        truncate = self.truncate if truncate is None else truncate
        ptext = self.prompt_text(messages)
        prompt = self.tok(ptext, add_special_tokens=not self.templated)["input_ids"]
        resp = self.tok(self.response_text(messages, response, ptext), add_special_tokens=False)["input_ids"]
        if len(prompt) > self.max_prompt_length:
            if not truncate:
                problems.append(Problem(where, "", "prompt", f"{len(prompt)} tokens, over max_prompt_length "
                                        f"{self.max_prompt_length} (raise it, or use --on-overlong truncate)"))
                return None
            prompt = prompt[-self.max_prompt_length:]  # keep the end: the question nearest the answer
        room = self.max_length - len(prompt)
        if len(resp) > room:
            if not truncate:
                problems.append(Problem(where, "", field, f"{len(prompt) + len(resp)} tokens with the prompt, over "
                                        f"max_length {self.max_length} (raise it, or use --on-overlong truncate)"))
                return None
            resp = resp[:room]
        return Encoded(tuple(prompt), tuple(resp))


def encode_pairs(pairs, renderer: Renderer) -> list[tuple[Encoded, Encoded]]:
    """Encode every pair's chosen and rejected sequence; raise :class:`DataError` listing every over-long one."""
    problems: list[Problem] = []
    out = []
    for p in pairs:
        c = renderer.encode(p.messages, p.chosen, p.source, "chosen", problems)
        r = renderer.encode(p.messages, p.rejected, p.source, "rejected", problems)
        if c is not None and r is not None:
            out.append((c, r))
    if problems:
        raise DataError(problems)
    return out
