"""What a ``bapo eval`` run is told to do."""

from __future__ import annotations

from dataclasses import dataclass

from bapo.core.fields import option, section
from bapo.data.config import check_lengths, max_length_option, max_prompt_length_option
from bapo.errors import ConfigError
from bapo.runtime.cluster import require_absolute
from bapo.runtime.config import (ClusterSettings, EngineSettings, cache_dir_option, check_device, device_option, dtype_option,
                                 model_option)


@dataclass
class EvalConfig:
    """A whole ``bapo eval`` run. ``bapo.evaluate(EvalConfig(...))`` is the same as the CLI."""

    model: str = model_option("Base model the adapters were trained on.")
    adapters: list[str] = option([], "Adapter directories (from bapo train) to evaluate beside the base model.")
    suite: str = option("default", "default (data shipped with bapo) or a suite YAML file.")
    out: str = option("results", "Output directory for results.json, results.csv and results.md.")
    adapter_scales: list[float] = option([1.0], "LoRA scales at which to evaluate each adapter (0 = base model).",
                                         flag="adapter-scale")
    reward_model: str = option("", "A sequence-classification reward model scoring generated answers (optional).")
    lm_eval_tasks: list[str] = option([], "lm-evaluation-harness tasks to add (needs lm-eval and its data).")
    batch_size: int = option(16, "Sequences per scoring batch.")
    generate_batch_size: int = option(32, "Prompts per generation batch (generative tasks' greedy answers; prompts "
                                          "of similar length batched together).")
    samples: int = option(5, "Prompts per generative task shown with every model's answer in samples.md (every "
                             "answer is in samples.jsonl).")
    merge_adapters: bool = option(True, "Merge each adapter into the weights while scoring it (faster; holds a "
                                        "copy of the weights it changes).", flag="merge/no-merge")
    engine: EngineSettings = section(EngineSettings, panel="Generation on a server")
    cluster: ClusterSettings = section(ClusterSettings, panel="Cluster (each model a Ray task)")
    max_length: int = max_length_option()
    max_prompt_length: int = max_prompt_length_option()
    cache_dir: str = cache_dir_option()
    device: str = device_option()
    dtype: str = dtype_option()

    def validate(self) -> None:
        check_lengths(self.max_length, self.max_prompt_length)
        check_device(self.device, self.dtype)
        if self.batch_size < 1:
            raise ConfigError("batch_size: must be at least 1")
        if self.generate_batch_size < 1:
            raise ConfigError("generate_batch_size: must be at least 1")
        self.engine.validate()
        if self.samples < 0:
            raise ConfigError("samples: must be 0 or more")
        if not self.adapter_scales:
            raise ConfigError("adapter_scales: give at least one scale")
        self.cluster.validate()
        if self.cluster.executor == "ray":
            require_absolute(out=self.out, cache_dir=self.cache_dir,
                             **({"suite": self.suite} if self.suite != "default" else {}),
                             **{f"adapters[{i}]": a for i, a in enumerate(self.adapters)})
