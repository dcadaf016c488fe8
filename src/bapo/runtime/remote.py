"""Generation on an OpenAI-compatible server (vLLM, SGLang, ``bapo serve``) instead of transformers' ``generate``.

bapo sends the prompt as the token ids it would generate from itself (the legacy ``/v1/completions`` endpoint takes
a list of ids in vLLM, SGLang and ``bapo serve``), so the server's own chat-template handling never enters: the
answer is the one the same model would give here, up to the engine's rounding. Requests run concurrently (at most
``concurrency`` in flight), a dropped connection or a 5xx is retried with backoff, and every answer is handed back as
it arrives so that the caller can cache it (a server killed mid-run loses only the answers in flight).

Before any work, :func:`check_serves` asks the server for a few greedy answers and scores them with the local model
(teacher forcing): a server that runs another model, or the same one with another chat template, picks tokens the
local model would not, and the run stops with one line instead of caching another model's answers.

Written on the standard library (``urllib`` in a thread pool) rather than the openai client: it is one POST per
prompt, and bapo's installs stay free of an HTTP stack for this alone.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from bapo.errors import BapoError, ConfigError
from bapo.runtime.generate import stop_ids

RETRIED_STATUS = {408, 429, 500, 502, 503, 504}
PROBES = ["What is the capital of France?", "Write one sentence about the sea.", "Name three prime numbers."]


class RemoteError(BapoError):
    """The server answered with an error bapo cannot retry away, or stayed unreachable."""


@dataclass(frozen=True)
class Completion:
    """One request: prompt token ids and how to decode."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    model: str = ""  # the model's id on the server (default: the engine's)
    adapter_scale: float = 1.0  # bapo serve's own field: an adapter dialled down (other servers ignore it)


class RemoteEngine:
    """An OpenAI-compatible server at ``url`` (``http://host:port/v1``) answering for ``model`` (its id there)."""

    def __init__(self, url: str, model: str = "", api_key: str = "", concurrency: int = 8, timeout_s: float = 600.0,
                 retries: int = 6):
        self.url = url.rstrip("/")
        self.api_key = api_key or os.environ.get("BAPO_GENERATE_API_KEY", "")
        self.concurrency, self.timeout_s, self.retries = concurrency, timeout_s, retries
        self._model = model
        self._models: list[dict] | None = None

    @property
    def model(self) -> str:
        """The base model's id on the server: as given, else asked of it on first use (so that a run whose answers
        are all cached never contacts the server)."""
        if not self._model:
            self._model = self.base_model()
        return self._model

    def _request(self, path: str, body: dict | None = None) -> dict:
        """One HTTP exchange, retried on a dropped connection, a timeout or a 5xx / 429 (exponential backoff with
        jitter, up to ``retries`` times)."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url + path, data=data, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                if e.code not in RETRIED_STATUS or attempt == self.retries:
                    raise RemoteError(f"generate_with: {self.url}{path} answered {e.code}: {_message(e)}") from None
                problem = f"{e.code}"
            except (http.client.HTTPException, OSError) as e:  # URLError, timeouts, resets: all OSError
                problem = str(getattr(e, "reason", e))
                if attempt == self.retries:
                    raise RemoteError(f"generate_with: cannot reach {self.url} ({problem}) after {self.retries + 1} "
                                      f"tries: is the server running?") from None
            time.sleep(min(30.0, 0.5 * 2**attempt) * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")

    def models(self) -> list[dict]:
        """What the server's ``/v1/models`` lists (asked once)."""
        if self._models is None:
            self._models = self._request("/models").get("data", [])
        return self._models

    def takes_scales(self) -> bool:
        """Whether the server honours ``adapter_scale`` (bapo serve does; vLLM and SGLang would ignore it and answer
        at scale 1)."""
        return any(m.get("owned_by") == "bapo" for m in self.models())

    def base_model(self) -> str:
        """The first model the server lists that is not an adapter of another (no ``parent``)."""
        models = self.models()
        bases = [m["id"] for m in models if not m.get("parent")]
        if not bases:
            raise ConfigError(f"generate_with: {self.url} lists no base model; name it with --generate-model")
        return bases[0]

    def complete(self, c: Completion) -> str:
        """The answer to one prompt, stripped of surrounding whitespace as local generation strips it."""
        body = {"model": c.model or self.model, "prompt": list(c.prompt_ids), "max_tokens": c.max_tokens,
                "temperature": c.temperature, "top_p": c.top_p}
        if c.seed is not None:
            body["seed"] = c.seed
        if c.adapter_scale != 1.0:
            body["adapter_scale"] = c.adapter_scale
        answer = self._request("/completions", body)
        try:
            return answer["choices"][0]["text"].strip()
        except (KeyError, IndexError, TypeError):
            raise RemoteError(f"generate_with: {self.url}/completions answered without choices[0].text") from None

    def complete_many(self, items: Iterable[tuple[str, Completion]],
                      done: Callable[[str, str], None]) -> None:
        """Answer every ``(key, completion)``, at most ``concurrency`` in flight, calling ``done(key, text)`` in this
        thread as each arrives. The first error is raised at once: what has not started is cancelled, and the
        requests in flight are left to end on their own (their answers unused; what ``done`` received is kept)."""
        items = iter(items)
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="bapo-remote")
        failed = False
        try:
            running = {}
            for key, c in items:
                running[pool.submit(self.complete, c)] = key
                if len(running) >= self.concurrency:
                    break
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    key = running.pop(f)
                    done(key, f.result())
                    nxt = next(items, None)
                    if nxt is not None:
                        running[pool.submit(self.complete, nxt[1])] = nxt[0]
        except BaseException:
            failed = True
            raise
        finally:
            pool.shutdown(wait=not failed, cancel_futures=True)


def _message(e: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(e.read())
        return str(body.get("error", {}).get("message") or body.get("message") or body)[:300]
    except (ValueError, AttributeError, OSError):
        return e.reason if isinstance(e.reason, str) else "error"


# A server's greedy token "agrees" with the local model where it is within NEAR_TIE nats of the local best choice
# (0: the argmax; a near-tie that another dtype's or engine's rounding flips stays within). The same model agrees on
# nearly every token (a token lost to decoding and re-encoding the text, such as a special one, aside); another
# model, or the same one behind another chat template, on few.
NEAR_TIE = 0.5
SAME_MODEL_AGREEMENT = 0.75


@torch.no_grad()
def teacher_forced_gap(model, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> list[float]:
    """For each answer token: the local model's best log-prob there minus the token's (0 where it is the argmax)."""
    ids = torch.tensor([list(prompt_ids) + list(answer_ids)], device=model.device)
    logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt_ids) - 1 : -1].float()
    logp = torch.log_softmax(logits, -1)
    picked = logp.gather(-1, torch.tensor(list(answer_ids), device=logp.device).unsqueeze(-1)).squeeze(-1)
    return (logp.max(-1).values - picked).tolist()


@dataclass
class RemoteModel:
    """A model to generate with on a server: the server's id for it (an adapter's name, or the base model's), the
    scale of its adapter, and the local copy it must match (checked on first use,
    :func:`check_serves`). :func:`bapo.runtime.generate.generate_answers` takes one in place of a model."""

    engine: RemoteEngine
    name: str
    local: object  # the same model here (the adapter applied at the same scale)
    scale: float = 1.0
    checked: bool = False

    def answers(self, renderer, prompt_ids: list[list[int]], max_new_tokens: int,
                progress: Callable[[int], None] | None = None) -> list[str]:
        """Greedy answers to each prompt (token ids), in order."""
        if not self.checked:
            if self.scale != 1.0 and not self.engine.takes_scales():
                raise ConfigError(f"generate_with: {self.engine.url} cannot answer for '{self.name}' at scale "
                                  f"{self.scale:g}: adapter scales other than 1 need bapo serve")
            check_serves(self.engine, self.local, renderer, stop_ids(self.local, renderer.tok), name=self.name,
                         scale=self.scale)
            self.checked = True
        out: list[str] = [""] * len(prompt_ids)

        def done(i: int, text: str) -> None:
            out[i] = text
            if progress is not None:
                progress(1)

        self.engine.complete_many(((i, Completion(tuple(ids), max_new_tokens, model=self.name,
                                                  adapter_scale=self.scale)) for i, ids in enumerate(prompt_ids)),
                                  done)
        return out


def check_serves(engine: RemoteEngine, model, renderer, stop: Sequence[int], max_tokens: int = 12, name: str = "",
                 scale: float = 1.0) -> float:
    """Greedy answers to :data:`PROBES` from the server, scored by the local ``model`` under teacher forcing: the share
    of their tokens that the local model would pick too (up to a near-tie, :data:`NEAR_TIE`). A
    :class:`ConfigError` where it is under :data:`SAME_MODEL_AGREEMENT`."""
    gaps: list[float] = []
    tok = renderer.tok
    for q in PROBES:
        prompt = renderer.prompt_ids([{"role": "user", "content": q}])[-renderer.max_prompt_length:]
        text = engine.complete(Completion(tuple(prompt), max_tokens, model=name, adapter_scale=scale))
        answer = tok(text, add_special_tokens=False)["input_ids"] if text else []
        answer = answer or list(stop[:1])  # an empty answer: the server ended at once; was that the best here too?
        gaps += teacher_forced_gap(model, prompt, answer)
    agreement = sum(g <= NEAR_TIE for g in gaps) / len(gaps)
    if agreement < SAME_MODEL_AGREEMENT:
        at = f" at scale {scale:g}" if scale != 1.0 else ""
        raise ConfigError(f"generate_with: {engine.url} serves '{name or engine.model}'{at}, whose greedy answers "
                          f"agree with this model's on {agreement:.0%} of their tokens (the same model: over "
                          f"{SAME_MODEL_AGREEMENT:.0%}): serve the model bapo scores with (an adapter under its folder's "
                          f"name; scales other than 1 need bapo serve), or name the base model with --generate-model")
    return agreement
