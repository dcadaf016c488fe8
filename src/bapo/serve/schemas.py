"""The OpenAI chat-completions API's request and response shapes that bapo serves (a subset: one choice, text
content, as a string or as text parts), as pydantic models, plus ``adapter_scale``: bapo's own field, sent by the openai client in ``extra_body``."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ContentPart(BaseModel):
    """One part of a message's content as current OpenAI clients send it: ``{"type": "text", "text": ...}``."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class Message(BaseModel):
    """A chat message: its content a string or a list of text parts (joined); ``developer`` is OpenAI's newer name
    for the system role and is taken as one."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    def unsupported_part(self) -> int | None:
        """The index of the first part that is not text (images, audio, files), or None."""
        if isinstance(self.content, str):
            return None
        return next((i for i, p in enumerate(self.content) if p.type != "text" or p.text is None), None)

    def as_chat(self) -> dict[str, str]:
        """The message as the chat template takes it: a plain role and text."""
        text = self.content if isinstance(self.content, str) else "".join(p.text or "" for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``. Unknown OpenAI fields are accepted and ignored, as vLLM does."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    adapter_scale: float = Field(default=1.0, ge=0.0, le=1.0)

    def unsupported_part(self) -> str | None:
        """The field of the first content part bapo cannot take (``messages.0.content.1``), or None."""
        for i, m in enumerate(self.messages):
            k = m.unsupported_part()
            if k is not None:
                return f"messages.{i}.content.{k}"
        return None

    @property
    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class CompletionRequest(BaseModel):
    """``POST /v1/completions`` (OpenAI's legacy text completions): a raw prompt, no chat template. ``prompt`` is a
    string (tokenized as the tokenizer does by default) or token ids, or a list of either (one choice each), as vLLM
    and SGLang take it; bapo's own ``--generate-with`` sends token ids."""

    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: Literal[False] = False
    echo: Literal[False] = False
    logprobs: None = None
    adapter_scale: float = Field(default=1.0, ge=0.0, le=1.0)

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per choice."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)

    @property
    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(cid: str, model: str, text: str, finish: str, usage: Usage) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "logprobs": None}],
            "usage": usage.model_dump()}


def text_completion(model: str, choices: list[tuple[str, str]], usage: Usage) -> dict:
    """``/v1/completions``' answer: one choice per prompt, ``(text, finish_reason)`` each."""
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": [{"index": i, "text": t, "finish_reason": f, "logprobs": None}
                                        for i, (t, f) in enumerate(choices)],
            "usage": usage.model_dump()}


def chunk(cid: str, model: str, delta: dict, finish: str | None = None, usage: Usage | None = None) -> dict:
    out = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    if usage is not None:
        out["usage"] = usage.model_dump()
    return out


def error(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
