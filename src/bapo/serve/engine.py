"""The engine: requests from many users answered in shared batches, each row through its own user's adapter.

One worker thread owns the model. It takes the first waiting request, waits ``batch_wait_ms`` for others that
decode the same way (greedy, or the same temperature and top-p; a seeded request runs alone so that its seed means
something), loads the adapters they name (:class:`~bapo.serve.pool.AdapterPool`) and runs one ``generate`` over the
left-padded batch with peft's per-row ``adapter_names``. Tokens stream back to each request as they come; a row ends
at its end-of-turn token, a stop string or its own ``max_tokens`` (the others go on), or when its client went away.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from bapo.core.tokens import Renderer
from bapo.runtime.generate import left_pad, stop_ids
from bapo.runtime.kv_cache import cache_kwargs
from bapo.serve.pool import BASE, AdapterLoadError, AdapterPool, ModelNotFound


@dataclass
class Request:
    """One chat completion to produce; ``emit`` receives ``("delta", text)`` events, then ``("done", Reply)``.
    ``prompt_ids`` (a text completion) replaces the chat template's rendering of ``messages``."""

    messages: list[dict[str, str]]
    adapter: str | None  # None: the base model
    scale: float = 1.0
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    emit: Callable[[tuple[str, Any]], None] = lambda event: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt_ids: list[int] | None = None

    @property
    def decoding(self) -> tuple:
        """Requests with the same key can share a batch."""
        if self.seed is not None:
            return ("seeded", id(self))
        return ("greedy",) if self.temperature == 0 else ("sample", self.temperature, self.top_p)


@dataclass
class Reply:
    text: str = ""
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: Exception | None = None


class StreamRow:
    """What one request of a batch has produced so far, and what of it has been sent."""

    def __init__(self, req: Request, prompt_tokens: int):
        self.req, self.ids, self.sent, self.done = req, [], 0, False
        self.reply = Reply(prompt_tokens=prompt_tokens)
        self.holdback = max((len(s) for s in req.stop), default=1) - 1  # a stop string may still be forming
        self.text, self.prefix_at, self.read_at = "", 0, 0  # text decoded so far, and the token window behind it

    def extend(self, tokenizer, token: int) -> str:
        """Append ``token`` and return the text so far, decoding only the last few tokens (as vLLM's incremental
        detokenizer does): decoding the whole row at every token would cost O(n^2) over a long answer. A token that
        ends inside a multi-byte character waits for the next one."""
        self.ids.append(token)
        before = tokenizer.decode(self.ids[self.prefix_at:self.read_at], skip_special_tokens=True)
        after = tokenizer.decode(self.ids[self.prefix_at:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self.prefix_at, self.read_at = self.read_at, len(self.ids)
        return self.text


class _Streamer(BaseStreamer):
    """Receives each step's new token of every row from ``generate`` and hands text on, row by row."""

    def __init__(self, rows: list[StreamRow], tokenizer, eos: set[int]):
        self.rows, self.tok, self.eos, self.first = rows, tokenizer, eos, True

    def put(self, value: torch.Tensor) -> None:
        if self.first:  # generate hands over the prompt first
            self.first = False
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist()):
            if not row.done:
                self._step(row, token)

    def end(self) -> None:
        for row in self.rows:
            if not row.done:
                self._finish(row, "length")

    def _step(self, row: StreamRow, token: int) -> None:
        if row.req.cancelled.is_set():
            row.done = True
            return
        if token in self.eos:
            self._finish(row, "stop")
            return
        text = row.extend(self.tok, token)
        cut = min((text.find(s) for s in row.req.stop if s in text), default=-1)
        if cut >= 0:
            self._finish(row, "stop", text[:cut])
        elif len(row.ids) >= row.req.max_tokens:
            self._finish(row, "length", text)
        else:
            self._send(row, text, len(text) - row.holdback)

    def _send(self, row: StreamRow, text: str, upto: int) -> None:
        start = row.sent if row.sent else len(text) - len(text.lstrip())  # no leading whitespace, like generate's
        if upto > start and not text[start:upto].endswith("\ufffd"):  # never half a multi-byte character
            row.req.emit(("delta", text[start:upto]))
            row.sent = upto

    def _finish(self, row: StreamRow, reason: str, text: str | None = None) -> None:
        text = self.tok.decode(row.ids, skip_special_tokens=True) if text is None else text
        text = text.rstrip() if reason == "stop" else text
        self._send(row, text, len(text))
        start = len(text) - len(text.lstrip())
        row.done = True
        row.reply.text, row.reply.finish_reason = text[start:], reason
        row.reply.completion_tokens = len(row.ids)
        row.req.emit(("done", row.reply))


class _RowsDone(StoppingCriteria):
    def __init__(self, rows: list[StreamRow]):
        self.rows = rows

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.tensor([r.done for r in self.rows], device=input_ids.device)


class Engine:
    """Batches requests over one model and its adapter pool in a worker thread; :meth:`submit` never blocks."""

    def __init__(self, pool: AdapterPool, tokenizer, renderer: Renderer, max_batch: int = 16, wait_s: float = 0.005):
        self.pool, self.tok, self.renderer = pool, tokenizer, renderer
        self.max_batch, self.wait_s = max_batch, wait_s
        self.inbox: queue.Queue[Request | None] = queue.Queue()
        self.held: deque[Request] = deque()  # taken from the inbox but not fit for the batch being formed
        self.batches: list[int] = []  # sizes of the batches run, for tests and the benchmark
        self.thread = threading.Thread(target=self._loop, name="bapo-engine", daemon=True)
        self.thread.start()

    def submit(self, req: Request) -> None:
        self.inbox.put(req)

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join(timeout=30)

    def _next(self, timeout: float | None) -> Request | None:
        if self.held:
            return self.held.popleft()
        return self.inbox.get(timeout=timeout) if timeout is None or timeout > 0 else self.inbox.get_nowait()

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            batch, kept = [first], []
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    req = self._next(max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if req is None:
                    self.inbox.put(None)  # stop after this batch
                    break
                (batch if req.decoding == first.decoding else kept).append(req)
            self.held.extendleft(reversed(kept))
            self._run([r for r in batch if not r.cancelled.is_set()])

    def _run(self, batch: list[Request]) -> None:
        keys = self._adapters(batch)
        live = [(r, k) for r, k in zip(batch, keys) if k is not None]
        if not live:
            return
        try:
            self._generate([r for r, _ in live], [k for _, k in live])
        except Exception as e:  # a failed batch must not stop the engine; each request gets the error
            print(f"bapo serve: batch of {len(live)} failed: {type(e).__name__}: {e}", file=sys.stderr)
            for r, _ in live:
                r.emit(("done", Reply(error=e)))

    def _adapters(self, batch: list[Request]) -> list[str | None]:
        keys: list[str | None] = []
        for r in batch:
            if r.adapter is None:
                keys.append(BASE)
                continue
            try:
                keys.append(self.pool.acquire(r.adapter, r.scale, {k for k in keys if k}))
            except (ModelNotFound, AdapterLoadError) as e:
                if isinstance(e, ModelNotFound):
                    self.pool.forget(r.adapter)
                r.emit(("done", Reply(error=e)))
                keys.append(None)
        return keys

    @torch.no_grad()
    def _generate(self, reqs: list[Request], keys: list[str]) -> None:
        self.batches.append(len(reqs))
        if len(self.batches) > 10_000:  # a long-running server keeps only the recent sizes
            del self.batches[:5_000]
        prompts = [(self.renderer.prompt_ids(r.messages) if r.prompt_ids is None else r.prompt_ids)
                   [-self.renderer.max_prompt_length:] for r in reqs]
        pad = self.tok.pad_token_id
        ids, attn = left_pad(prompts, pad)
        model = self.pool.current
        eos = stop_ids(model, self.tok)
        rows = [StreamRow(r, len(p)) for r, p in zip(reqs, prompts)]
        first = reqs[0]
        kwargs: dict[str, Any] = dict(max_new_tokens=max(r.max_tokens for r in reqs), eos_token_id=eos,
                                      pad_token_id=pad, streamer=_Streamer(rows, self.tok, set(eos)),
                                      stopping_criteria=StoppingCriteriaList([_RowsDone(rows)]))
        if first.temperature > 0:
            kwargs.update(do_sample=True, temperature=first.temperature, top_p=first.top_p)
            if first.seed is not None:
                torch.manual_seed(first.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.pool.model is not None:
            kwargs["adapter_names"] = keys
        model.generate(input_ids=ids.to(model.device), attention_mask=attn.to(model.device), **kwargs,
                       **cache_kwargs(model, kwargs["max_new_tokens"]))

