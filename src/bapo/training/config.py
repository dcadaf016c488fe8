"""What a training run (``bapo train``) and the reference step alone (``bapo base``) are told to do."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bapo.core.fields import option, section
from bapo.core.losses import LossConfig
from bapo.core.methods import split_method
from bapo.data.config import DataConfig
from bapo.errors import ConfigError
from bapo.runtime.cluster import require_absolute
from bapo.runtime.config import (BaseResponseConfig, BudgetSettings, ClusterSettings, EngineSettings, LoraSettings, cache_dir_option, check_device, device_option,
                                 dtype_option, model_option)


@dataclass
class TrainConfig:
    """A whole ``bapo train`` run. ``bapo.train(TrainConfig(...))`` is the same as the CLI."""

    model: str = model_option()
    out: str = option("", "Output directory for the adapter, config, metrics and held-out split.")
    cache_dir: str = cache_dir_option()
    device: str = device_option()
    dtype: str = dtype_option()
    finetune: str = option("lora", "lora (a PEFT adapter) or full (every weight trains; the output is a Hugging Face "
                                   "model directory; weights and optimizer in float32, --dtype bfloat16 autocasts).")
    data: DataConfig = section(DataConfig, panel="Data")
    loss: LossConfig = section(LossConfig, panel="Loss")
    lora: LoraSettings = section(LoraSettings, prefix="lora-", panel="LoRA")
    base: BaseResponseConfig = section(BaseResponseConfig, prefix="base-", panel="Base responses")
    engine: EngineSettings = section(EngineSettings, panel="Base responses")
    budget: BudgetSettings = section(BudgetSettings, panel="Forgetting budget")
    cluster: ClusterSettings = section(ClusterSettings, panel="Cluster (--per-user on Ray)")
    epochs: float = option(1.0, "Passes over the training pairs.")
    max_steps: int = option(-1, "Stop after this many optimizer steps (-1 = use epochs).")
    batch_size: int = option(4, "Pairs per device per step.")
    grad_accum: int = option(1, "Gradient accumulation steps.")
    micro_batch_size: int = option(2, "Pairs per forward pass within a step (the largest divisor of batch_size up to "
                                      "this; 0 = the whole batch): same gradients, less activation memory.")
    lr: float = option(1e-4, "Peak learning rate (AdamW).")
    warmup_ratio: float = option(0.05, "Fraction of steps of linear warm-up.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    seed: int = option(42, "Seed for data split, shuffling and initialisation.")
    save_steps: int = option(50, "Checkpoint every N optimizer steps.")
    logging_steps: int = option(1, "Log metrics every N optimizer steps.")
    resume: bool = option(False, "Continue from the newest checkpoint in OUT/checkpoints.")
    pack_prompts: bool = option(True, "Encode each prompt once for its chosen, rejected and base responses (4D mask).")
    reference_logps: str = option("auto", "Where training reads the reference's log-probs: cached (computed once before "
                                          "training) or in-batch (the model with its LoRA adapter disabled, on the "
                                          "policy's own batch: one more forward pass per step, equal to the policy at "
                                          "step 0 in any dtype); auto: in-batch for BAPO's anchor with LoRA in bfloat16 or "
                                          "float16, else cached.")
    per_user: bool = option(False, "One adapter per user in one process: per user_id of --data, or per file of a "
                                   "--data folder; OUT/<user_id>/ each and OUT/users.csv. Reruns resume.")
    skip_bad_users: bool = option(False, "With per_user: train the users whose data is valid and list the others "
                                         "(OUT/skipped.txt) instead of stopping.")

    @property
    def pairs_per_forward(self) -> int:
        """The micro-batch actually used: the largest divisor of ``batch_size`` not above ``micro_batch_size``."""
        if not self.micro_batch_size or self.micro_batch_size >= self.batch_size:
            return self.batch_size
        return max(d for d in range(1, self.micro_batch_size + 1) if self.batch_size % d == 0)

    @property
    def methods(self) -> list[str]:
        """The methods to train: one, or several (``dpo,replay,bapo``; ``bapo:0.1`` with its own lambda) for the
        forgetting budget to choose among."""
        return [m.strip() for m in self.loss.method.split(",") if m.strip()]

    def for_method(self, method: str, out: str) -> "TrainConfig":
        """This run with one of its methods, into ``out``: ``bapo:0.1`` is BAPO with lambda 0.1 (a candidate of its
        own beside ``bapo`` at ``anchor_lambda``)."""
        name, weight = split_method(method, "loss.method")
        lam = self.loss.anchor_lambda if weight is None else weight
        return replace(self, out=out, loss=replace(self.loss, method=name, anchor_lambda=lam))

    def validate(self) -> None:
        if len(self.methods) > 1:
            if not self.budget.limits():
                raise ConfigError(f"loss.method: {self.loss.method} names several methods; a forgetting budget "
                                  f"(--forgetting-budget) chooses among them, give one")
            for method in self.methods:
                self.for_method(method, self.out).validate()
            return
        name, weight = split_method(self.loss.method, "loss.method")
        if weight is not None:
            raise ConfigError(f"loss.method: {self.loss.method}: a lambda of its own is for a candidate among several "
                              f"methods under a forgetting budget; alone, give --anchor-lambda {weight:g} --method {name}")
        if not self.out:
            raise ConfigError("out: an output directory is required")
        if not self.data.path:
            raise ConfigError("data.path: preference data is required")
        for sub in (self.data, self.loss, self.base, self.engine, self.budget, self.cluster):
            sub.validate()
        if self.cluster.executor == "ray":
            if not self.per_user:
                raise ConfigError("cluster.executor: ray spreads --per-user's users over a cluster; one adapter "
                                  "trains here (or under torchrun / accelerate launch)")
            require_absolute(out=self.out, **{"data.path": self.data.path, "cache_dir": self.cache_dir})
        if self.budget.limits() and self.finetune != "lora":
            raise ConfigError("forgetting_budget: needs finetune lora (its scale is the adapter's)")
        check_device(self.device, self.dtype)
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("batch_size and grad_accum: must be at least 1")
        if self.micro_batch_size < 0:
            raise ConfigError("micro_batch_size: must be 0 (whole batch) or positive")
        if self.lr <= 0:
            raise ConfigError("lr: must be positive")
        if self.per_user and (self.finetune != "lora" or self.data.eval_path or self.data.user):
            raise ConfigError("per_user: trains one LoRA adapter per user, each held-out split its own (finetune "
                              "lora; no eval_path, no user)")
        if self.reference_logps not in ("auto", "cached", "in-batch"):
            raise ConfigError(f"reference_logps: '{self.reference_logps}' is not one of auto, cached, in-batch")
        if self.reference_logps == "in-batch" and self.finetune != "lora":
            raise ConfigError("reference_logps: in-batch needs finetune lora (the reference is the model with the "
                              "adapter disabled)")
        if self.finetune not in ("lora", "full"):
            raise ConfigError(f"finetune: '{self.finetune}' is not one of lora, full")
        if self.loss.needs_token_kl and not self.pack_prompts:
            raise ConfigError("loss.method: kl needs pack_prompts (its KL is taken over packed base responses)")
        if self.loss.needs_token_kl and self.finetune == "full":
            raise ConfigError("loss.method: kl needs finetune lora: its reference is the model with the adapter "
                              "disabled (full fine-tuning would need a second model in memory)")


@dataclass
class BaseRunConfig:
    """A ``bapo base`` run: the reference model answers every prompt of a pair file and scores every response."""

    data: DataConfig = section(DataConfig, cli=("path", "max_length", "max_prompt_length"), panel="Data")
    out: str = option("", "JSONL file of base responses and reference log-probs.")
    model: str = model_option()
    cache_dir: str = cache_dir_option()
    device: str = device_option()
    dtype: str = dtype_option()
    generation: BaseResponseConfig = section(BaseResponseConfig, panel="Generation")
    engine: EngineSettings = section(EngineSettings, panel="Generation")

    def validate(self) -> None:
        if not self.out:
            raise ConfigError("out: an output file is required")
        if not self.data.path:
            raise ConfigError("data.path: preference data is required")
        self.data.validate()
        self.generation.validate()
        self.engine.validate()
        check_device(self.device, self.dtype)
