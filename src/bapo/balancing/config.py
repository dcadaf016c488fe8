"""What a ``bapo balance`` run is told to do: whose prompts, which judge, which budget, which strategy."""

from __future__ import annotations

from dataclasses import dataclass

from bapo.core.fields import option, section
from bapo.data.config import DataConfig
from bapo.errors import ConfigError
from bapo.runtime.config import (LoraSettings, cache_dir_option, check_device, device_option, dtype_option,
                                 model_option)

STRATEGIES = ("none", "uniform", "bpo")


@dataclass
class BalanceConfig:
    """A whole ``bapo balance`` run; ``bapo.balance(BalanceConfig(...))`` is the same as the CLI."""

    data: DataConfig = section(DataConfig, cli=("path", "user", "max_length", "max_prompt_length"), panel="Data")
    out: str = option("", "Output directory: pairs.jsonl (TRL format, at most --budget pairs) and report.json.")
    budget: int = option(64, "B: the number of preference pairs to keep.")
    strategy: str = option("bpo", "none (B prompts, one pair each, as the data has them), uniform (P prompts x D "
                                  "pairs, at random) or bpo (representative prompts, pairs by gradient clusters).")
    breadth: int = option(0, "P: prompts kept by uniform and bpo (0 = B // D).")
    depth: int = option(0, "D: pairs per prompt for uniform (0 = the largest divisor of B up to sqrt(B) and what a "
                           "prompt's candidates give, so P x D = B); bpo's average depth is B / P.")
    judge: str = option("labels", "Who says which response is better: labels (the data's own pairs only), "
                                  "psoups:PROFILE (a simulated user's rule; also steers candidates) or reward "
                                  "(--reward-model).")
    reward_model: str = option("", "Sequence-classification reward model for --judge reward.")
    responses: int = option(6, "K: candidate responses per prompt written by the model (judges other than labels): "
                               "greedy, greedy steered towards and away from a profile, then seeded samples.")
    max_new_tokens: int = option(96, "Longest candidate response, in tokens.")
    temperature: float = option(0.7, "Sampling temperature of the sampled candidates.")
    top_p: float = option(0.95, "Nucleus mass of the sampled candidates.")
    batch_size: int = option(16, "Prompts per generation batch.")
    projection_dim: int = option(32, "bpo: per-pair gradients are projected to this many numbers.")
    grad_clusters: int = option(0, "bpo: k of the k-means over pair gradients (0 = D).")
    beta: float = option(0.1, "bpo: beta of the DPO loss whose gradients are clustered.")
    seed: int = option(0, "Seed: prompt order, samples, k-means, the LoRA start and the projection.")
    model: str = model_option()
    cache_dir: str = cache_dir_option()
    device: str = device_option()
    dtype: str = dtype_option()
    lora: LoraSettings = section(LoraSettings, prefix="lora-", panel="LoRA (bpo's gradients)")

    def validate(self) -> None:
        if not self.out:
            raise ConfigError("out: an output directory is required")
        if not self.data.path:
            raise ConfigError("data.path: prompts or preference pairs are required")
        if self.budget < 1:
            raise ConfigError(f"budget: must be at least 1 pair (got {self.budget})")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy: unknown '{self.strategy}'; choose one of {', '.join(STRATEGIES)}")
        if self.breadth < 0 or self.depth < 0 or self.grad_clusters < 0:
            raise ConfigError("breadth, depth, grad_clusters: 0 (automatic) or more")
        if self.judge != "labels" and not (self.judge == "reward" or self.judge.startswith("psoups:")):
            raise ConfigError(f"judge: unknown '{self.judge}'; choose labels, psoups:PROFILE or reward")
        if self.judge == "reward" and not self.reward_model:
            raise ConfigError("judge: reward needs --reward-model")
        if self.responses < 2:
            raise ConfigError("responses: at least 2 candidates per prompt make a pair")
        if self.projection_dim < 2:
            raise ConfigError("projection_dim: at least 2")
        self.data.validate()
        check_device(self.device, self.dtype)
