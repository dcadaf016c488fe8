"""Validated pairs -> token ids: the model's chat template, length limits, and the response boundary.

A sequence is ``prompt_ids + response_ids``; only response tokens are scored. The response is rendered the way the
chat template would close an assistant turn (for SmolLM2: ``text<|im_end|>\\n``), found as the difference between
the templated conversation with and without the response, as TRL does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from bapo.errors import DataError, Problem

try:  # transformers renders chat templates with jinja2 and lets its errors through
    from jinja2.exceptions import TemplateError
except ImportError:  # pragma: no cover - jinja2 comes with transformers
    TemplateError = ValueError  # type: ignore[misc,assignment]


@dataclass(frozen=True)
class Encoded:
    """One scored sequence: the prompt's ids and the response's ids (never empty)."""

    prompt: tuple[int, ...]
    response: tuple[int, ...]

    @property
    def ids(self) -> list[int]:
        return [*self.prompt, *self.response]


class Renderer:
    """Turns chat messages and responses into token ids under one tokenizer and one set of length limits.

    Chat templates differ by family, and two of their differences would otherwise break or bend scoring:
    - Some have no system role (Gemma 2, Mistral v0.1) and raise on a system message. The system text is then folded
      into the first user turn, as Gemma 3's own template does, with a one-line note.
    - Some do not render a conversation that starts with the rendered prompt (a Mistral v0.3-style template moves the
      system text into the last user turn), so the response cannot be found as the difference of the two. It is then
      the response text and the end-of-sequence token, with a one-line note naming the model.
    ``enable_thinking`` is passed to the template (Qwen 3 renders an empty ``<think>`` block when it is off; other
    templates ignore it).
    """

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int, truncate: bool = True,
                 enable_thinking: bool = False):
        self.tok = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.truncate = truncate
        self.enable_thinking = enable_thinking
        self.templated = bool(getattr(tokenizer, "chat_template", None))
        self.fold_system = False  # set when the template refused a system message
        self.noted: set[str] = set()

    def _note(self, kind: str, text: str) -> None:
        if kind not in self.noted:
            self.noted.add(kind)
            warnings.warn(text, stacklevel=3)

    @property
    def model(self) -> str:
        return getattr(self.tok, "name_or_path", "") or "this model"

    def _folded(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if not self.fold_system or not messages or messages[0]["role"] != "system":
            return messages
        system, rest = messages[0]["content"], messages[1:]
        if rest and rest[0]["role"] == "user":
            return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
        return [{"role": "user", "content": system}, *rest]

    def _render(self, messages: list[dict[str, str]], **kw) -> str:
        try:
            return self.tok.apply_chat_template(self._folded(messages), tokenize=False,
                                                enable_thinking=self.enable_thinking, **kw)
        except TemplateError as e:
            if self.fold_system or not messages or messages[0]["role"] != "system":
                raise DataError(Problem(self.model, "", "chat template", f"the chat template of {self.model} "
                                        f"refused this conversation: {e}")) from None
            self.fold_system = True
            self._note("system", f"the chat template of {self.model} has no system role ({e}): system messages are "
                                 f"folded into the first user turn")
            return self._render(messages, **kw)

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        if self.templated:
            return self._render(messages, add_generation_prompt=True)
        # No chat template (a base model): plain turns, the response follows on a new line.
        return "\n".join(m["content"] for m in messages) + "\n"

    def response_text(self, messages: list[dict[str, str]], response: str, prompt_text: str) -> str:
        if self.templated:
            full = self._render([*messages, {"role": "assistant", "content": response}])
            if full.startswith(prompt_text):
                return full[len(prompt_text):]
            self._note("prefix", f"the chat template of {self.model} does not render a conversation as its prompt "
                                 f"followed by the answer; each response is scored as its text and the end-of-sequence "
                                 f"token, without the template's own framing of an answer")
        return response + (self.tok.eos_token or "")

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.tok(self.prompt_text(messages), add_special_tokens=not self.templated)["input_ids"]

    def encode(self, messages: list[dict[str, str]], response: str, where: str, field: str,
               problems: list[Problem], truncate: bool | None = None) -> Encoded | None:
        """Encode one (prompt, response); an over-long text is truncated or, with ``reject``, reported."""
        truncate = self.truncate if truncate is None else truncate
        try:
            ptext = self.prompt_text(messages)
            rtext = self.response_text(messages, response, ptext)
        except DataError as e:
            problems.append(Problem(where, "", "prompt", e.problems[0].message if e.problems else str(e)))
            return None
        prompt = self.tok(ptext, add_special_tokens=not self.templated)["input_ids"]
        resp = self.tok(rtext, add_special_tokens=False)["input_ids"]
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
