"""Settings of the runtime layer: which model, on which device and in which dtype, its LoRA shape, and how it writes
answers. Options shared by several commands are declared here once, as field factories, so each has one default."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from bapo.core.fields import option
from bapo.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"
DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N."
DTYPE_HELP = ("auto (bfloat16 where the device computes in it natively: CUDA with bf16, a CPU with AVX512-BF16 or AMX; "
              "float32 elsewhere), float32, bfloat16 or float16.")


def model_option(help: str = "Model: smollm2-135m-instruct (embedded), a local HF directory, or a hub id.") -> Any:
    return option(DEFAULT_MODEL, help)


def cache_dir_option() -> Any:
    return option("", "Cache for converted models, base responses, reference log-probs and scores "
                      "(default $BAPO_CACHE_DIR, else ~/.cache/bapo).")


def device_option() -> Any:
    return option("auto", DEVICE_HELP)


def dtype_option() -> Any:
    return option("auto", DTYPE_HELP)


def check_device(device: str, dtype: str) -> None:
    """Reject a malformed ``device`` or ``dtype`` before anything is loaded."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device):
        raise ConfigError(f"device: '{device}' is not one of auto, cpu, cuda, cuda:N")
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype: '{dtype}' is not one of auto, float32, bfloat16, float16")


@dataclass
class LoraSettings:
    """LoRA adapter shape (peft)."""

    r: int = option(16, "LoRA rank.")
    alpha: int = option(32, "LoRA alpha (scale = alpha / r).")
    dropout: float = option(0.0, "Dropout on the LoRA branch; 0 keeps policy == reference at step 0.")
    target_modules: list[str] = option(["all-linear"], "Modules to adapt; 'all-linear' = every linear layer but the "
                                                       "output head.", flag="targets")


@dataclass
class BaseResponseConfig:
    """How the reference model writes its base responses y_b (``bapo base``)."""

    max_new_tokens: int = option(96, "Longest base response, in tokens.")
    do_sample: bool = option(False, "Sample instead of greedy decoding.", flag="sample/greedy")
    temperature: float = option(0.7, "Sampling temperature (used only with do_sample).")
    top_p: float = option(0.95, "Nucleus sampling mass (used only with do_sample).")
    num_responses: int = option(1, "Base responses per prompt; more than 1 needs do_sample.", flag="num")
    batch_size: int = option(64, "Prompts per generation batch (left-padded, length-sorted), decoded together.")
    prefill_rows: int = option(8, "Prompts per group in a batch's first pass, each group padded only to its own "
                                  "longest (0: the whole batch in one pass).")
    seed: int = option(0, "Seed for sampled base responses.")

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError("base.max_new_tokens: must be at least 1")
        if self.num_responses < 1:
            raise ConfigError("base.num_responses: must be at least 1")
        if self.num_responses > 1 and not self.do_sample:
            raise ConfigError("base.num_responses: more than 1 base response per prompt needs base.do_sample: true")
        if self.batch_size < 1:
            raise ConfigError("base.batch_size: must be at least 1")
        if self.prefill_rows < 0:
            raise ConfigError("base.prefill_rows: must be 0 or more")
        if self.do_sample and self.temperature <= 0:
            raise ConfigError("base.temperature: must be positive when sampling")

    def key(self) -> dict[str, Any]:
        """The settings that change what is generated (batch size and prefill groups do not, under greedy decoding in
        float32; in 16-bit dtypes they move the rounding)."""
        d = dataclasses.asdict(self)
        d.pop("batch_size")
        d.pop("prefill_rows")
        if not self.do_sample:
            for k in ("temperature", "top_p", "seed"):
                d.pop(k)
        return d


@dataclass
class EngineSettings:
    """Where the reference model generates: here (transformers' ``generate``), or on a server that runs it."""

    url: str = option("", "Generate on this OpenAI-compatible server (vLLM, SGLang, bapo serve: http://HOST:PORT/v1) "
                          "instead of here: base responses, and bapo eval's answers (each adapter served under its "
                          "folder's name). It must serve the same models (bapo checks a few greedy answers of each "
                          "first); answers land in the same cache as local ones.", flag="generate-with")
    model: str = option("", "The model's id on that server (default: the first base model it lists).",
                        flag="generate-model")
    concurrency: int = option(8, "Requests to the server in flight at once.", flag="generate-concurrency")

    def validate(self) -> None:
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"engine.url: '{self.url}' is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
        if self.concurrency < 1:
            raise ConfigError("engine.concurrency: must be at least 1")


@dataclass
class ClusterSettings:
    """Where independent jobs run: here, one after another (local), or each as a Ray task on a cluster (ray)."""

    executor: str = option("local", "local (here, as always) or ray: each user a Ray task on a cluster (outputs, data "
                                    "and cache on a filesystem every node sees, given as absolute paths).")
    ray_address: str = option("", "The Ray cluster to join (auto: the one running on this machine, or "
                                  "ray://HOST:10001); empty: start one here.")
    task_cpus: float = option(1.0, "CPUs each Ray task takes (its torch threads).")
    task_gpus: float = option(0.0, "GPUs each Ray task takes (a fraction shares one).")
    task_memory_gb: float = option(0.0, "Memory each Ray task reserves, in GiB (0: no reservation).")
    task_retries: int = option(3, "Times a task whose worker or node died is run again (it resumes from its "
                                  "checkpoints and the cache).")

    def validate(self) -> None:
        if self.executor not in ("local", "ray"):
            raise ConfigError(f"cluster.executor: '{self.executor}' is not one of local, ray")
        if self.task_cpus < 0 or self.task_gpus < 0 or self.task_memory_gb < 0 or self.task_retries < 0:
            raise ConfigError("cluster: task_cpus, task_gpus, task_memory_gb and task_retries must not be negative")


BUDGET_MEASURES = {  # measure -> what its number means (a loss: positive = lost against the base model)
    "drift": "nats per token lost on the reference's own answers to general prompts",
    "qa": "the base model's share of probe questions answered right minus the adapter's",
    "qa_share": "the share of the probe questions the base model answered right that the adapter lost (net)",
    "refusal": "the base model's share of harmful probe requests refused minus the adapter's",
}


@dataclass
class BudgetSettings:
    """A forgetting budget (``bapo train --forgetting-budget``): after training, a quick probe scores the adapter at
    each of ``scales`` and the largest scale whose measured losses all stay within the budget is built in."""

    spec: str = option("", "Most forgetting allowed, as MEASURE:LIMIT[,...]: drift (nats/token lost on the reference's "
                           "answers to general prompts), qa or refusal (share lost on a probe set), qa_share (share of "
                           "the probe questions the base model knew that were lost), e.g. drift:0.1,refusal:0.05. "
                           "Empty: no budget (the adapter as trained).", flag="forgetting-budget")
    scales: list[float] = option([1.0, 0.75, 0.5, 0.25, 0.0], "Adapter scales the probe tries, largest kept first.",
                                 flag="budget-scales")
    drift_prompts: str = option("package:general_prompts.jsonl", "Prompts of the drift probe (the reference answers "
                                "them once, cached).", flag="budget-drift-prompts")
    # 10: the cheapest drift probe that held wherever its budget bound on the frontier study's adapters (40 and 20
    # held as well; docs/RESULTS.md, 2026-12-06)
    drift_items: int = option(10, "Prompts in the drift probe (a seeded subset; 0 = all).", flag="budget-drift-items")
    qa_path: str = option("", "Questions of the qa probe (TriviaQA-style JSONL); needed by a qa or qa_share "
                          "budget.",
                          flag="budget-qa-data")
    # 300: the size qa_share's probe was validated at (docs/RESULTS.md, 2026-12-06; at 100 it held for 77-80%)
    qa_items: int = option(300, "Questions in the qa probe (0 = all).", flag="budget-qa-items")
    refusal_path: str = option("", "Harmful requests of the refusal probe (prompts JSONL, or HH transcripts); needed "
                               "by a refusal budget.", flag="budget-refusal-data")
    refusal_items: int = option(50, "Requests in the refusal probe (0 = all).", flag="budget-refusal-items")

    def limits(self) -> dict[str, float]:
        """The budget as ``{measure: most loss allowed}``; a malformed spec is a :class:`ConfigError` naming it."""
        out: dict[str, float] = {}
        for part in (p.strip() for p in self.spec.split(",")):
            if not part:
                continue
            name, sep, value = part.partition(":")
            if not sep or not value.strip():
                raise ConfigError(f"forgetting_budget: '{part}' is not MEASURE:LIMIT (for example drift:0.1)")
            if name.strip() not in BUDGET_MEASURES:
                raise ConfigError(f"forgetting_budget: unknown measure '{name.strip()}'; choose from "
                                  f"{', '.join(BUDGET_MEASURES)}")
            try:
                limit = float(value)
            except ValueError:
                raise ConfigError(f"forgetting_budget: {name.strip()}: '{value.strip()}' is not a number") from None
            if not limit >= 0 or limit == float("inf"):
                raise ConfigError(f"forgetting_budget: {name.strip()}: the limit must be a finite number >= 0, "
                                  f"not {value.strip()}")
            if name.strip() in out:
                raise ConfigError(f"forgetting_budget: {name.strip()} is given twice")
            out[name.strip()] = limit
        return out

    def validate(self) -> None:
        limits = self.limits()
        if not limits:
            return
        if not self.scales or any(not 0.0 <= s <= 1.0 for s in self.scales):
            raise ConfigError("budget.scales: each scale must be in [0, 1]")
        for measure, path in (("qa", self.qa_path), ("qa_share", self.qa_path), ("refusal", self.refusal_path)):
            if measure in limits and not path:
                flag = "--budget-refusal-data" if measure == "refusal" else "--budget-qa-data"
                raise ConfigError(f"forgetting_budget: {measure} needs its probe set: give it with {flag}")
