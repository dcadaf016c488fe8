"""Users of known, measurable heterogeneity: per-user preference sets for ``bapo study``.

A *user spec* names one user. Real personalized data (files as published, or their copies in ``../shared/data``):

- ``dsp:DOMAIN`` - Domain-Specific Preference (Cheng et al., 2023; Linear95/DSP): for each query the user prefers
  the response written for their domain (academy, business, entertainment, literature) over the other domains'
  and the original one.
- ``alpacaeval:concise`` / ``alpacaeval:verbose`` - the 805 AlpacaEval instructions answered by one model told to be
  concise and told to be verbose (tatsu-lab/alpaca_eval results): the user prefers their own style.
- ``vpl:helpful`` / ``vpl:harmless`` - Anthropic HH pairs relabelled by a helpful-minded or a harmless-minded user
  (Poddar et al., 2024, VPL; WEIRDLabUW/vpl_llm), with the original (general) label alongside.

Constructed users:

- ``flip:H[:RULE]`` - general preference pairs with a fraction ``H`` of them reversed. The reversed pairs are chosen
  by a rule, so the user is consistent rather than noisy: ``length`` (default) reverses the pairs whose chosen answer
  is longest relative to the rejected one first (a user who dislikes the general taste for longer answers);
  ``hash`` reverses a fixed pseudo-random subset. The sets are nested: the pairs reversed at 0.25 are reversed at 0.5.
- ``psoups:PROFILE`` - a simulated user along a P-SOUPS axis (see :mod:`bapo.data.profiles`): the base model writes
  its candidate answers, so those users are built with a model, in :mod:`bapo.studies.users`.

*Heterogeneity* is measured, not assumed, by a judge that may need a model: :mod:`bapo.studies.users`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from bapo.core.fields import option
from bapo.data.pairs import PreferencePair, prompt_messages
from bapo.data.profiles import SIMULATED
from bapo.data.readers import hh_messages, load_general_pairs, read_json
from bapo.errors import ConfigError, DataError, Problem
from bapo.io import cache_root

DSP_DOMAINS = ("academy", "business", "entertainment", "literature")
KINDS = ("dsp", "alpacaeval", "vpl", "flip", "psoups")


SHARED_DATA = Path("../shared/data")  # the project's own copies, beside a checkout


def default_data_dir(fetched: bool = False) -> Path:
    """Where the studies look for data sets: ``../shared/data`` where it exists (this project's checkouts), else the
    folder ``bapo data fetch`` fills (``data`` in bapo's cache); with ``fetched``, always the latter."""
    if not fetched and SHARED_DATA.is_dir():
        return SHARED_DATA
    return cache_root() / "data"


@dataclass
class Sources:
    """Where each kind of user's data lives; empty fields default to the ``../shared/data`` layout under ``data_dir``.
    Each accepts the original file from its public home (same format)."""

    data_dir: str = option("", "Directory holding the data sets in the layout of ../shared/data (default: "
                               "../shared/data where it exists, else what `bapo data fetch` wrote, ~/.cache/bapo/data).")
    dsp: str = option("", "DSP domain-preference JSON [DATA_DIR/personal/dsp_domain_preference_test.json].")
    alpacaeval_concise: str = option("", "AlpacaEval outputs of a model told to be concise "
                                         "[DATA_DIR/personal/alpacaeval_gpt-3.5-turbo-1106_concise.json].")
    alpacaeval_verbose: str = option("", "The same model's verbose outputs "
                                         "[DATA_DIR/personal/alpacaeval_gpt-3.5-turbo-1106_verbose.json].")
    vpl: str = option("", "VPL relabelled HH pairs, JSONL(.gz) [DATA_DIR/personal/vpl_relabeled_hh_both_test.jsonl.gz].")
    general: str = option("", "General preference pairs that flip users reverse (HH or DSP text/score format) "
                              "[DATA_DIR/general/dsp_helpful_test.json].")
    prompts: str = option("", "Prompts simulated users are answered on [DATA_DIR/prompts/alpaca_eval_instructions.jsonl].")

    def folder(self) -> Path:
        """``data_dir``, else :func:`default_data_dir`."""
        return Path(self.data_dir) if self.data_dir else default_data_dir()

    def path(self, name: str) -> str:
        defaults = {"dsp": "personal/dsp_domain_preference_test.json",
                    "alpacaeval_concise": "personal/alpacaeval_gpt-3.5-turbo-1106_concise.json",
                    "alpacaeval_verbose": "personal/alpacaeval_gpt-3.5-turbo-1106_verbose.json",
                    "vpl": "personal/vpl_relabeled_hh_both_test.jsonl.gz",
                    "general": "general/dsp_helpful_test.json",
                    "prompts": "prompts/alpaca_eval_instructions.jsonl"}
        path = getattr(self, name) or str(self.folder() / defaults[name])
        if not Path(path).exists():
            raise ConfigError(f"sources.{name}: {path} not found (run `bapo data fetch`, or set --data-dir or "
                              f"sources.{name} in the config)")
        return str(Path(path).resolve())


@dataclass
class User:
    """One user's preference pairs. ``general_agree[i]`` says whether pair i's label matches general preference where
    the data itself carries a general label (None where it does not)."""

    name: str
    spec: str
    pairs: list[PreferencePair]
    general_agree: list[bool] | None
    source: str


def user_name(spec: str) -> str:
    """A file- and label-safe name: ``flip:0.5`` -> ``flip-0.5``."""
    return spec.replace(":", "-").replace("/", "_")


def parse_spec(spec: str) -> tuple[str, list[str]]:
    kind, *args = spec.strip().split(":")
    if kind not in KINDS:
        raise ConfigError(f"users: unknown user '{spec}'; a user is one of {', '.join(k + ':...' for k in KINDS)}")
    if kind == "dsp" and (len(args) != 1 or args[0] not in DSP_DOMAINS):
        raise ConfigError(f"users: '{spec}': use dsp:DOMAIN with DOMAIN one of {', '.join(DSP_DOMAINS)}")
    if kind == "alpacaeval" and args not in (["concise"], ["verbose"]):
        raise ConfigError(f"users: '{spec}': use alpacaeval:concise or alpacaeval:verbose")
    if kind == "vpl" and args not in (["helpful"], ["harmless"]):
        raise ConfigError(f"users: '{spec}': use vpl:helpful or vpl:harmless")
    if kind == "flip":
        try:
            h = float(args[0])
        except (IndexError, ValueError):
            raise ConfigError(f"users: '{spec}': use flip:H with H a fraction in [0, 1]") from None
        if not 0 <= h <= 1 or len(args) > 2 or (len(args) == 2 and args[1] not in ("length", "hash")):
            raise ConfigError(f"users: '{spec}': use flip:H[:length|hash] with H in [0, 1]")
    if kind == "psoups" and (len(args) != 1 or args[0] not in SIMULATED):
        raise ConfigError(f"users: '{spec}': use psoups:PROFILE with PROFILE one of {', '.join(SIMULATED)}")
    return kind, args


def build_user(spec: str, sources: Sources, n_pairs: int, seed: int = 0) -> User:
    """The user's pairs from published data (every kind but ``psoups``, whose pairs a model writes: see
    :func:`bapo.studies.users.make_user`): at most ``n_pairs``, a seeded sample (all pairs when ``n_pairs`` is 0)."""
    kind, args = parse_spec(spec)
    name = user_name(spec)
    rng = random.Random(f"{seed}:{spec}")
    if kind == "flip":
        path = sources.path("general")
        items = load_general_pairs(path)
        return _flip_user(spec, name, items, float(args[0]), args[1] if len(args) > 1 else "length", n_pairs, rng, path)
    if kind == "psoups":
        raise ConfigError(f"users: '{spec}' is simulated: the base model writes its candidate answers")
    loaders = {"dsp": _dsp_pairs, "alpacaeval": _alpacaeval_pairs, "vpl": _vpl_pairs}
    pairs, agree, path = loaders[kind](args[0], sources, name)
    idx = sample(list(range(len(pairs))), n_pairs, rng)
    return User(name, spec, [pairs[i] for i in idx], None if agree is None else [agree[i] for i in idx], path)


def sample(items: list, n: int, rng: random.Random) -> list:
    """At most ``n`` of ``items`` (all when ``n`` is 0), a seeded sample kept in order."""
    if not n or n >= len(items):
        return list(items)
    return [items[i] for i in sorted(rng.sample(range(len(items)), n))]


def make_pair(messages: Any, chosen: str, rejected: str, user: str, where: str) -> PreferencePair:
    return PreferencePair(prompt=prompt_messages(messages), chosen=chosen, rejected=rejected, user_id=user, source=where)


def _read_json(path: str, what: type = list) -> Any:
    """A JSON file holding a ``what`` (a list of records, by default)."""
    data = read_json(path)
    if not isinstance(data, what):
        raise DataError(Problem(path, 1, "file", f"expected a JSON {what.__name__}, got {type(data).__name__}"))
    return data


def _dsp_pairs(domain: str, sources: Sources, user: str):
    path = sources.path("dsp")
    pairs = []
    for i, rec in enumerate(_read_json(path), 1):
        responses = rec.get("responses") if isinstance(rec, dict) else None
        if not isinstance(responses, dict) or not isinstance(rec.get("query"), str) or domain not in responses:
            raise DataError(Problem(path, f"record {i}", "responses", f"expected query and responses.{domain}"))
        mine = responses[domain]
        for other, text in responses.items():
            if other != domain and isinstance(text, str) and text.strip() and text.strip() != mine.strip():
                pairs.append(make_pair(rec["query"], mine, text, user, f"{path}:record {i}"))
    return pairs, None, path


def _alpacaeval_pairs(style: str, sources: Sources, user: str):
    paths = {s: sources.path(f"alpacaeval_{s}") for s in ("concise", "verbose")}
    outputs = {}
    for s, path in paths.items():
        rows = _read_json(path)
        for i, r in enumerate(rows, 1):
            if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not isinstance(r.get("output"), str):
                raise DataError(Problem(path, f"record {i}", "output", "expected instruction and output strings"))
        outputs[s] = {r["instruction"]: r["output"] for r in rows}
    other = "verbose" if style == "concise" else "concise"
    pairs = [make_pair(q, outputs[style][q], outputs[other][q], user, paths[style])
             for q in outputs[style] if q in outputs[other] and outputs[style][q].strip() and outputs[other][q].strip()
             and outputs[style][q].strip() != outputs[other][q].strip()]
    return pairs, None, paths[style]


def _vpl_pairs(objective: str, sources: Sources, user: str):
    path = sources.path("vpl")
    opener = gzip.open if path.endswith(".gz") else open
    pairs, agree = [], []
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(Problem(path, line_no, "line", f"not valid JSON: {e.msg}")) from None
            except RecursionError:
                raise DataError(Problem(path, line_no, "line", "JSON nested too deeply")) from None
            if not isinstance(rec, dict):
                raise DataError(Problem(path, line_no, "line", "expected a JSON object"))
            if rec.get("objective") != objective:
                continue
            try:
                responses, label, general = rec["responses"], int(rec["label"]), int(rec["original_label"])
                messages, _ = hh_messages(rec["prompt"] + "\n\nAssistant: .")
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(Problem(path, line_no, "record", f"expected prompt, responses, label, original_label "
                                                                  f"({e})")) from None
            if len(responses) != 2 or label not in (0, 1) or not all(r.strip() for r in responses) or \
                    responses[0].strip() == responses[1].strip():
                continue
            pairs.append(make_pair(messages, responses[label], responses[1 - label], user, f"{path}:{line_no}"))
            agree.append(label == general)
    return pairs, agree, path


def flip_order(items: Sequence, rule: str) -> list[int]:
    """The order in which a flip user reverses general pairs: the first ``round(h * n)`` are reversed at rate h."""
    if rule == "length":  # most 'longer is better' first; ties broken by a content hash, so the order is fixed
        return sorted(range(len(items)), key=lambda i: (-(len(items[i].chosen) - len(items[i].rejected)),
                                                        _digest(items[i])))
    return sorted(range(len(items)), key=lambda i: _digest(items[i]))


def _digest(item) -> str:
    return hashlib.sha256(json.dumps([item.messages, item.chosen, item.rejected]).encode()).hexdigest()


def _flip_user(spec, name, items, h, rule, n_pairs, rng, path) -> User:
    chosen_items = sample(items, n_pairs, rng)
    flipped = set(flip_order(chosen_items, rule)[: round(h * len(chosen_items))])
    pairs, agree = [], []
    for i, it in enumerate(chosen_items):
        c, r = (it.rejected, it.chosen) if i in flipped else (it.chosen, it.rejected)
        pairs.append(make_pair(it.messages, c, r, name, path))
        agree.append(i not in flipped)
    return User(name, spec, pairs, agree, path)
