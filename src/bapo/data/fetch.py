"""``bapo data fetch``: the public data sets the studies read, downloaded from their homes into the layout the
studies expect (``knowledge/``, ``general/``, ``personal/``, ``prompts/``), each file checked against its sha256.

Downloads resume: bytes arrive in ``NAME.part`` beside the target, a rerun asks the server for the rest (an HTTP
``Range`` request) and only a file whose checksum matches is renamed into place. ``--mirror URL`` takes every file
from ``URL/<layout path>`` instead (a copy of the layout on an internal server; the tests serve one on 127.0.0.1).
Written with urllib rather than ``datasets``/``huggingface_hub``: these are plain files in GitHub repositories, and
resuming and checksumming one file is a few lines that a hub client would not make shorter.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bapo.errors import BapoError

RAW = "https://raw.githubusercontent.com"
FOUNDRY = f"{RAW}/mosaicml/llm-foundry/HEAD/scripts/eval/local_data"
ALPACA_EVAL = f"{RAW}/tatsu-lab/alpaca_eval/HEAD/results"


@dataclass(frozen=True)
class DataSet:
    """One file of the layout: where it lands, where it comes from, its checksum and its license."""

    path: str  # in the layout, e.g. knowledge/arc_easy.jsonl
    url: str
    sha256: str
    license: str
    derive: str = ""  # how the file is made from the download when it is not the download itself


def _alpaca(model: str, style: str, sha: str) -> DataSet:
    return DataSet(f"personal/alpacaeval_{model}_{style}.json", f"{ALPACA_EVAL}/{model}_{style}/model_outputs.json",
                   sha, "Apache-2.0 (alpaca_eval repository)")


# The files of ../shared/data/README.md, with the checksums of those copies (2026-12-05).
DATASETS = (
    DataSet("knowledge/arc_easy.jsonl", f"{FOUNDRY}/world_knowledge/arc_easy.jsonl",
            "d2d12e59543acf9a5ef6079634a72b30215e36c2fd4236fff3bc855d287b87f5", "Apache-2.0 repo; ARC: CC BY-SA 4.0"),
    DataSet("knowledge/piqa.jsonl", f"{FOUNDRY}/commonsense_reasoning/piqa.jsonl",
            "d2870e73aec5154df3faf259b7700876e11608eebdf69e9d6667435673dbe4e0", "Apache-2.0 repo; PIQA: AFL-3.0"),
    DataSet("knowledge/openbook_qa.jsonl", f"{FOUNDRY}/commonsense_reasoning/openbook_qa.jsonl",
            "adb2e5c7f8db810ddad4d6b2bf53dcc86dcc545499f7aafcaf42a8e179476c09", "Apache-2.0 repo"),
    DataSet("knowledge/triviaqa_sm_sub.jsonl", f"{FOUNDRY}/world_knowledge/triviaqa_sm_sub.jsonl",
            "e3e8222e94cae291d7ab132e59f09c4f51580ed3e23639cf29c2926b4c8284e9", "Apache-2.0 repo; TriviaQA: Apache-2.0"),
    DataSet("general/hh_harmless_base_test.jsonl.gz", f"{RAW}/anthropics/hh-rlhf/HEAD/harmless-base/test.jsonl.gz",
            "ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03", "MIT"),
    DataSet("general/dsp_helpful_test.json", f"{RAW}/Linear95/DSP/HEAD/data/helpful.test.json",
            "690ea4896f18e47c60802b370572e4dbcbfe23746064653c0bce26ce0f3c01c1", "CC BY-NC 4.0 (evaluation only)"),
    DataSet("personal/dsp_domain_preference_test.json",
            f"{RAW}/Linear95/DSP/HEAD/data/domain_specific_preference.test.json",
            "e4aac8fe77dfd4e41168785856a552402b7f28a359606e6d3c28818489fda9e6", "CC BY-NC 4.0 (evaluation only)"),
    DataSet("personal/vpl_relabeled_hh_both_test.jsonl.gz",
            f"{RAW}/WEIRDLabUW/vpl_llm/HEAD/data/relabeled_hh_rlhf/both/test.jsonl.gz",
            "2de08be13910c4b2056d72d3cf5e0708b0a34e0ebdb7a18b6fb70d6a5587ce6e", "see the vpl_llm repository"),
    _alpaca("alpaca-7b", "concise", "935b416bd085cc5110d58b0933b986419615e81468b447f99b030654ac88afc9"),
    _alpaca("alpaca-7b", "verbose", "7456bc3b9231f6032b254cb1ec68a03e36c19e593424e8032223debbc03d9c3e"),
    _alpaca("gpt-3.5-turbo-1106", "concise", "7cc15c87a8f64f6e9b2e9ca42dbc11c92fae0e5b9b33fc18f95dab58c26e66f7"),
    _alpaca("gpt-3.5-turbo-1106", "verbose", "beb36c9457e456b959ab627fe800a6c586e53c9e90a57decd839c4a8fac24ce7"),
    DataSet("prompts/alpaca_eval_instructions.jsonl", f"{ALPACA_EVAL}/alpaca-7b/model_outputs.json",
            "b5db4fec6d28469df1b7a70859decd2387a8065654e9b1d3cca537d2f26371f3", "Apache-2.0 (alpaca_eval repository)",
            derive="instructions"),
    DataSet("prompts/mt_bench_questions.jsonl",
            f"{RAW}/lm-sys/FastChat/HEAD/fastchat/llm_judge/data/mt_bench/question.jsonl",
            "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7", "Apache-2.0"),
    DataSet("prompts/self_instruct_seed_tasks.jsonl", f"{RAW}/tatsu-lab/stanford_alpaca/HEAD/seed_tasks.jsonl",
            "7779004fa198fdf27cf70a159363879d8a26c53329e11b436af17b3941875f48", "CC BY-NC 4.0 (evaluation only)"),
)


def _instructions(raw: bytes) -> bytes:
    """AlpacaEval's 805 instructions from a model_outputs.json: one ``{"instruction", "dataset"}`` line each."""
    rows = json.loads(raw)
    return "".join(json.dumps({"instruction": r["instruction"], "dataset": r["dataset"]}) + "\n"
                   for r in rows).encode()


DERIVE: dict[str, Callable[[bytes], bytes]] = {"instructions": _instructions}


@dataclass(frozen=True)
class Fetched:
    """One data set after ``fetch``: ``status`` is ok (downloaded now), cached (already there, checksum ok) or the
    one-line reason it failed."""

    data: DataSet
    status: str

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "cached")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(to: Path, mirror: str = "", only: tuple[str, ...] = (), timeout: float = 30.0,
          progress: Callable[[DataSet, str], None] | None = None) -> list[Fetched]:
    """Download every data set (or those in ``only``, by layout path) into ``to``; never raises for one data set's
    failure: each result says what happened."""
    chosen = [d for d in DATASETS if not only or d.path in only]
    unknown = set(only) - {d.path for d in DATASETS}
    if unknown:
        raise BapoError(f"--only: unknown data set(s) {', '.join(sorted(unknown))}; known: "
                        f"{', '.join(d.path for d in DATASETS)}")
    out = []
    for d in chosen:
        result = Fetched(d, _fetch_one(d, to, mirror, timeout))
        out.append(result)
        if progress is not None:
            progress(d, result.status)
    return out


def _fetch_one(d: DataSet, to: Path, mirror: str, timeout: float) -> str:
    target = to / d.path
    if target.exists() and sha256(target) == d.sha256:
        return "cached"
    target.parent.mkdir(parents=True, exist_ok=True)
    # from a mirror the layout's own file is served (already derived); from its home, the original
    url, derive = (f"{mirror.rstrip('/')}/{d.path}", "") if mirror else (d.url, d.derive)
    part = target.with_name(target.name + ".part")
    try:
        _download(url, part, timeout)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        return f"cannot download {url}: {reason} (partial download kept; rerun to resume)"
    data = DERIVE[derive](part.read_bytes()) if derive else None
    got = hashlib.sha256(data).hexdigest() if data is not None else sha256(part)
    if got != d.sha256:
        part.unlink()
        return f"sha256 mismatch for {url}: got {got[:16]}..., expected {d.sha256[:16]}... (nothing kept)"
    if data is not None:
        part.write_bytes(data)
    os.replace(part, target)
    return "ok"


def _download(url: str, part: Path, timeout: float) -> None:
    """Append to ``part`` what the server has beyond its current size (a ``Range`` request); a server that answers
    with the whole file (200) restarts it."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing beyond what we have: the part is whole
            return
        raise
    with resp:
        mode = "ab" if have and resp.status == 206 else "wb"
        with open(part, mode) as f:
            while block := resp.read(1 << 16):
                f.write(block)
        expected = resp.headers.get("Content-Length")
        if expected is not None and mode == "wb" and part.stat().st_size != int(expected):
            raise OSError(f"connection closed after {part.stat().st_size} of {expected} bytes")
        if expected is not None and mode == "ab" and part.stat().st_size != have + int(expected):
            raise OSError(f"connection closed after {part.stat().st_size - have} of {expected} bytes")
