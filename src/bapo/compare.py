"""``bapo eval``: the base model and any number of adapters, side by side, on the same items.

For every (model, adapter scale) it computes each task of the suite as per-item scores (cached on disk by model and
adapter fingerprint, so the base model is computed once and a rerun is instant), then reports each metric's mean
with its standard error and, for adapters, the paired change against the base model with a 95% interval.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console

from bapo import progress
from bapo.base import Reference, build_examples, open_reference
from bapo.config import DEFAULT_MODEL, BaseResponseConfig, DataConfig, option
from bapo.data import load_pairs
from bapo.errors import ConfigError
from bapo.evaluation import (TIE_NATS, Stat, drift_scores, general_pair_scores, mc_scores, paired_delta,
                             personal_scores, profile_scores, reward_scores)
from bapo.io import atomic_write_text, write_json
from bapo.profiles import PROFILES
from bapo.store import make_key
from bapo.suites import LOADERS, TaskSpec, load_suite, scored_sequences
from bapo.tokens import encode_pairs


@dataclass
class EvalConfig:
    """A whole ``bapo eval`` run."""

    model: str = option(DEFAULT_MODEL, "Base model the adapters were trained on.")
    adapters: list[str] = option([], "Adapter directories (from bapo train) to evaluate beside the base model.")
    suite: str = option("default", "default (data shipped with bapo) or a suite YAML file.")
    out: str = option("results", "Output directory for results.json, results.csv and results.md.")
    adapter_scales: list[float] = option([1.0], "LoRA scales at which to evaluate each adapter (0 = base model).")
    reward_model: str = option("", "A sequence-classification reward model scoring generated answers (optional).")
    lm_eval_tasks: list[str] = option([], "lm-evaluation-harness tasks to add (needs lm-eval and its data).")
    batch_size: int = option(16, "Sequences per scoring batch.")
    merge_adapters: bool = option(True, "Merge each adapter into the weights while scoring it (faster; holds a "
                                        "copy of the weights it changes).")
    max_length: int = option(512, "Longest prompt + response in tokens (longer are truncated).")
    max_prompt_length: int = option(384, "Longest prompt in tokens.")
    cache_dir: str = option("", "Cache directory [~/.cache/bapo].")


@dataclass
class Candidate:
    label: str
    adapter: Path | None = None
    scale: float = 1.0
    method: str = "base"
    digest: str = "base"
    personal: list[str] = field(default_factory=list)  # names of the personal tasks that are this model's own


def _adapter_info(path: Path) -> tuple[str, str]:
    """(method, digest) of an adapter directory; raise a clear error when it is not one."""
    if not (path / "adapter_config.json").exists():
        raise ConfigError(f"--adapters {path}: not an adapter directory (no adapter_config.json)")
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        if (path / name).exists():
            h.update((path / name).read_bytes())
    method = "adapter"
    if (path / "config.yaml").exists():
        import yaml

        loss = (yaml.safe_load((path / "config.yaml").read_text()) or {}).get("loss", {})
        method = loss.get("method", method)
        if method == "bapo":
            extras = [f"{k}={loss[k]}" for k, d in (("anchor_lambda", 1.0), ("anchor", "hinge"),
                                                    ("anchor_reduction", "sum")) if loss.get(k, d) != d]
            method = "bapo" + (f"({', '.join(extras)})" if extras else "")
    return method, h.hexdigest()[:16]


def _check_same_model(path: Path, fingerprint: str) -> None:
    run = path / "run.json"
    if run.exists():
        fp = json.loads(run.read_text()).get("model_fingerprint")
        if fp and fp != fingerprint:
            raise ConfigError(f"--adapters {path}: trained on a different model (fingerprint {fp}, "
                              f"--model has {fingerprint})")


@contextmanager
def _policy(model, cand: Candidate, merge: bool = True) -> Iterator[Any]:
    """``model`` with the candidate's adapter applied at its scale; afterwards ``model`` is exactly as before.

    With ``merge`` the LoRA update is added into the weights it changes (scoring then costs what the base model
    costs; docs/PERFORMANCE.md has the measured gain), and the original weights, kept aside, are copied back
    afterwards. peft's own ``unmerge_adapter`` would subtract the update again, which leaves float rounding in
    the base weights and so makes each adapter's scores depend on which adapters were evaluated before it.
    """
    if cand.adapter is None:
        yield model
        return
    from peft import PeftModel
    from peft.helpers import rescale_adapter_scale
    from peft.tuners.lora import LoraLayer

    peft_model = PeftModel.from_pretrained(model, str(cand.adapter)).eval()
    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    saved = [m.get_base_layer().weight.detach().clone() for m in layers] if merge else []
    try:
        with rescale_adapter_scale(peft_model, cand.scale):
            if merge:
                peft_model.merge_adapter()
            yield peft_model
    finally:
        for m, w in zip(layers, saved):
            m.get_base_layer().weight.data.copy_(w)
        peft_model.unload()  # back to the plain base model (its weights restored above, not unmerged)


class _Tasks:
    """The suite's data, loaded and validated before any model work, plus what the reference computes for it."""

    def __init__(self, cfg: EvalConfig, console: Console):
        self.specs = load_suite(cfg.suite).tasks
        if cfg.reward_model and not any(t.kind == "reward" for t in self.specs):
            self.specs.append(TaskSpec("general_reward", "reward", "package:general_prompts.jsonl"))
        if any(t.kind == "reward" for t in self.specs) and not cfg.reward_model:
            raise ConfigError("suite: a reward task needs --reward-model")
        self.items = {t.name: LOADERS[t.kind](t) for t in self.specs}
        for t in self.specs:
            console.print(f"task [bold]{t.name}[/] ({t.kind}): {len(self.items[t.name])} items from {t.path}")
        self.personal: dict[str, list] = {}  # name -> held-out pairs
        self.drift: dict[str, tuple[list, list[float]]] = {}
        self.personal_examples: dict[str, list] = {}

    def add_personal(self, name: str, pairs: list) -> None:
        self.personal[name] = pairs

    def prepare_reference(self, ref: Reference) -> None:
        for t in self.specs:
            if t.kind == "drift":
                prompts = self.items[t.name]
                texts = ref.generate(prompts, BaseResponseConfig(max_new_tokens=t.max_new_tokens))
                seqs = [ref.renderer.encode(m, r, "base", "base", [], truncate=True)
                        for m, rs in zip(prompts, texts) for r in rs]
                self.drift[t.name] = (seqs, [v for v, _ in ref.logps(seqs)])
        for name, pairs in self.personal.items():
            enc = encode_pairs(pairs, ref.renderer)
            self.personal_examples[name] = build_examples(ref, pairs, enc, BaseResponseConfig(), with_base=False)


def _personal_name(adapter: Path, pairs: list) -> str:
    users = {p.user_id for p in pairs}
    return f"personal:{users.pop()}" if len(users) == 1 and None not in users else f"personal:{adapter.name}"


def run_eval(cfg: EvalConfig, console: Console | None = None) -> list[dict]:
    """Evaluate the base model and every adapter (at every scale); write results and return the records."""
    console = console or Console()
    t0 = time.time()
    out = Path(cfg.out)
    tasks = _Tasks(cfg, console)
    candidates = [Candidate("base")]
    holdouts: dict[str, str] = {}  # holdout file digest -> personal task name
    for a in cfg.adapters:
        path = Path(a)
        method, digest = _adapter_info(path)
        own = []
        if (path / "holdout.jsonl").exists() and (path / "holdout.jsonl").stat().st_size:
            text = (path / "holdout.jsonl").read_bytes()
            key = hashlib.sha256(text).hexdigest()
            if key not in holdouts:
                pairs = load_pairs(str(path / "holdout.jsonl"))
                holdouts[key] = _personal_name(path, pairs)
                tasks.add_personal(holdouts[key], pairs)
            own = [holdouts[key]]
        for s in cfg.adapter_scales:
            label = path.name if cfg.adapter_scales == [1.0] else f"{path.name}@{s:g}"
            candidates.append(Candidate(label, path, s, method, digest, own))
    if len({c.label for c in candidates}) != len(candidates):
        raise ConfigError("--adapters: two adapters share a directory name; give them distinct names")

    data_cfg = DataConfig(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length)
    data_cfg.validate()
    ref = open_reference(cfg.model, data_cfg, cfg.cache_dir)
    for c in candidates:
        if c.adapter is not None:
            _check_same_model(c.adapter, ref.fingerprint)
    tasks.prepare_reference(ref)
    reward = _load_reward_model(cfg.reward_model) if cfg.reward_model else None

    scores: dict[str, dict[str, dict[str, list[float]]]] = {}
    for cand in candidates:
        scores[cand.label] = {}
        with _policy(ref.model, cand, cfg.merge_adapters) as model:
            own = [n for n in tasks.personal if cand.adapter is None or n in cand.personal]
            for name in [t.name for t in tasks.specs] + own:
                key = make_key("eval", ref.fingerprint, cand.digest, cand.scale, name, _task_key(tasks, name),
                               cfg.max_length, cfg.max_prompt_length, cfg.reward_model)
                cached = ref.store.get_eval(key)
                if cached is None:
                    with progress.bar(f"{cand.label}: {name}", _n_seqs(tasks, name)) as advance:
                        cached = _score_task(model, ref, tasks, name, cfg, reward, advance)
                    ref.store.put_eval(key, cached)
                scores[cand.label][name] = cached
        for name, value in (_lm_eval(cand, cfg, ref, console) or {}).items():
            scores[cand.label][name] = value

    records = _records(candidates, scores, tasks)
    meta = {"model": cfg.model, "model_fingerprint": ref.fingerprint, "suite": cfg.suite,
            "adapters": cfg.adapters, "adapter_scales": cfg.adapter_scales, "machine": _machine(),
            "seconds": round(time.time() - t0, 1), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {**meta, "records": records})
    write_json(out / "item_scores.json", scores)  # model -> task -> metric -> per-item values, for paired statistics
    atomic_write_text(out / "results.csv", _csv(records))
    md = markdown_table(records)
    atomic_write_text(out / "results.md", md)
    console.print(md)
    console.print(f"results: {out / 'results.json'} ({meta['seconds']:.0f} s)")
    return records


def _task_key(tasks: _Tasks, name: str) -> str:
    spec = next((t for t in tasks.specs if t.name == name), None)
    if spec is not None:
        return spec.key()
    rule = name.split(":", 1)[1] if name.split(":", 1)[1] in PROFILES else ""
    held = [p.to_record() for p in tasks.personal[name]]
    return hashlib.sha256(json.dumps([rule, TIE_NATS, held]).encode()).hexdigest()[:16]


def _n_seqs(tasks: _Tasks, name: str) -> int:
    """Sequences scored for a task (what its progress bar counts); generation tasks count their prompts."""
    if name in tasks.personal:
        return 2 * len(tasks.personal[name])
    spec = next(t for t in tasks.specs if t.name == name)
    return scored_sequences(spec.kind, tasks.items[name])


def _score_task(model, ref: Reference, tasks: _Tasks, name: str, cfg: EvalConfig, reward,
                advance=None) -> dict[str, list[float]]:
    if name in tasks.personal:
        out = personal_scores(model, tasks.personal_examples[name], ref.pad_id, cfg.batch_size, advance)
        rule = PROFILES.get(name.split(":", 1)[1])
        if rule is not None:  # the user's own rule, applied to what the model now writes for held-out prompts
            prompts = list({p.prompt_key: p.messages for p in tasks.personal[name]}.values())
            out["profile_score"] = profile_scores(model, ref.renderer, prompts, rule)["profile_score"]
        return out
    spec = next(t for t in tasks.specs if t.name == name)
    items = tasks.items[name]
    if spec.kind == "mc":
        return mc_scores(model, ref.tokenizer, items, cfg.batch_size * 2, advance)
    if spec.kind == "general_pairs":
        return general_pair_scores(model, ref.renderer, items, cfg.batch_size, advance)
    if spec.kind == "drift":
        seqs, ref_logps = tasks.drift[name]
        return drift_scores(model, seqs, ref_logps, ref.pad_id, cfg.batch_size, advance)
    rm, rtok = reward
    return reward_scores(model, ref.renderer, items, rm, rtok, spec.max_new_tokens)


def _load_reward_model(name: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bapo.errors import ModelError
    from bapo.models import resolve_model

    path = resolve_model(name)
    try:
        return AutoModelForSequenceClassification.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ModelError(f"--reward-model {name}: could not load a sequence-classification model: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None


def _lm_eval(cand: Candidate, cfg: EvalConfig, ref: Reference, console: Console) -> dict | None:
    """Optional lm-evaluation-harness tasks; returns ``{task: {metric: [value]}}`` or None when not asked for."""
    if not cfg.lm_eval_tasks:
        return None
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        if cand.adapter is None:
            console.print("[yellow]lm-eval is not installed: skipping --lm-eval-tasks (pip install lm-eval)[/]")
        return None
    with _policy(ref.model, cand, cfg.merge_adapters) as policy:
        try:
            res = simple_evaluate(model=HFLM(pretrained=policy, tokenizer=ref.tokenizer, batch_size=cfg.batch_size),
                                  tasks=cfg.lm_eval_tasks)
        except Exception as e:  # its data comes from the hub: offline is the usual failure
            console.print(f"[yellow]lm-eval failed for {cand.label}, skipped: {str(e).splitlines()[0]}[/]")
            return None
    out = {}
    for task, metrics in res["results"].items():
        vals = {m.split(",")[0]: v for m, v in metrics.items() if isinstance(v, float) and "stderr" not in m}
        out[f"lm_eval:{task}"] = {m: [v] for m, v in vals.items()}  # aggregate only: no per-item pairing
    return out


def _records(candidates: list[Candidate], scores: dict, tasks: _Tasks) -> list[dict]:
    kinds = {t.name: t.kind for t in tasks.specs}
    base = scores["base"]
    records = []
    for c in candidates:
        for task, metrics in scores[c.label].items():
            for metric, xs in metrics.items():
                s = Stat.of(xs)
                rec = {"model": c.label, "adapter": str(c.adapter or ""), "scale": c.scale if c.adapter else 0.0,
                       "method": c.method, "task": task,
                       "kind": kinds.get(task, "personal" if task.startswith("personal:") else "lm_eval"),
                       "metric": metric, "n": s.n, "value": s.value, "stderr": s.stderr,
                       "delta": None, "delta_stderr": None, "delta_lo": None, "delta_hi": None}
                if c.adapter is not None and task in base and len(base[task][metric]) == len(xs) and s.n > 1:
                    d, se, lo, hi = paired_delta(xs, base[task][metric])
                    rec.update(delta=d, delta_stderr=se, delta_lo=lo, delta_hi=hi)
                records.append(rec)
    return records


def _csv(records: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(records[0]) if records else ["model"])
    w.writeheader()
    w.writerows(records)
    return buf.getvalue()


def _fmt(r: dict) -> str:
    cell = f"{r['value']:.3f} ± {r['stderr']:.3f}"
    if r["delta"] is not None:
        cell += f" (Δ {r['delta']:+.3f} [{r['delta_lo']:+.3f}, {r['delta_hi']:+.3f}])"
    return cell


def markdown_table(records: list[dict]) -> str:
    """One markdown table per task: a row per model, a column per metric; Δ is the paired change against base."""
    parts = []
    for task in dict.fromkeys(r["task"] for r in records):
        rows = [r for r in records if r["task"] == task]
        metrics = list(dict.fromkeys(r["metric"] for r in rows))
        n = max(r["n"] for r in rows)
        parts.append(f"### {task} (n = {n})\n")
        parts.append("| model | method | " + " | ".join(metrics) + " |")
        parts.append("|---|---|" + "---|" * len(metrics))
        for model in dict.fromkeys(r["model"] for r in rows):
            by = {r["metric"]: r for r in rows if r["model"] == model}
            method = next(iter(by.values()))["method"]
            parts.append(f"| {model} | {method} | " + " | ".join(_fmt(by[m]) if m in by else "" for m in metrics) + " |")
        parts.append("")
    return "\n".join(parts)


def _machine() -> dict[str, Any]:
    import os

    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads()}
