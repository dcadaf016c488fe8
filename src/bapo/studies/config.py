"""What a ``bapo study`` run is told to do: its users, methods and seeds, its sizes, and the training and evaluation
configs every cell shares (composed, not copied)."""

from __future__ import annotations

from dataclasses import dataclass

from bapo.balancing.config import STRATEGIES
from bapo.core.fields import option, section
from bapo.core.losses import BASE_TERMS, LossConfig
from bapo.core.methods import method_losses, split_method
from bapo.data.config import DataConfig
from bapo.data.users import Sources, parse_spec, user_name
from bapo.errors import ConfigError
from bapo.evaluation.config import EvalConfig
from bapo.runtime.cluster import require_absolute
from bapo.runtime.config import BaseResponseConfig, ClusterSettings
from bapo.training.config import TrainConfig

DEFAULT_USERS = ["flip:0", "flip:0.5", "flip:1", "vpl:harmless"]


def study_training() -> TrainConfig:
    """The study's preset for training every cell: small enough that the default study finishes within an hour on
    a 2-core CPU (2 epochs at lr 2e-4, texts cut to 256 tokens, base responses of 64). A preset overrides defaults
    in this one place, as TRL's DPOConfig overrides TrainingArguments' learning rate."""
    return TrainConfig(epochs=2.0, lr=2e-4, save_steps=10, data=DataConfig(max_length=256, max_prompt_length=160),
                       base=BaseResponseConfig(max_new_tokens=64))


@dataclass
class StudyConfig:
    """A whole ``bapo study`` run. The defaults finish within an hour on a 2-core CPU with the embedded model."""

    users: list[str] = option(list(DEFAULT_USERS), "User specs (see bapo.data.users): dsp:DOMAIN, "
                                                   "alpacaeval:concise|verbose, vpl:helpful|harmless, "
                                                   "flip:H[:length|hash], psoups:PROFILE.")
    methods: list[str] = option(["dpo", "bapo"], "Training losses to compare (bapo, any pairwise loss, or kto on the "
                                                 "users' pairs as thumbs); a base-response method may carry its own "
                                                 "lambda, METHOD:LAMBDA (bapo:0.1): one arm per lambda, and its "
                                                 "preference loss, METHOD/LOSS (bapo/kto).")
    seeds: int = option(1, "Seeds per (user, method): LoRA initialisation and data order.")
    more_seeds: list[str] = option([], "Arms with more seeds than --seeds, as ARM=N (dpo=5, bapo=5): the arms a "
                                       "decisive contrast rests on; seeds 0 to N-1, the first --seeds shared with the "
                                       "rest of the study.")
    out: str = option("study", "Output directory.")
    pairs_per_user: int = option(64, "Training pairs per user (a seeded sample; 0 = all).")
    holdout_pairs: int = option(32, "Held-out pairs per user, on prompts never trained on (personalization).")
    candidate_samples: int = option(2, "Simulated users: sampled answers per prompt besides the 3 greedy (steered) ones.")
    eval_items: int = option(200, "Items per knowledge task, ARC-Easy and PIQA (a seeded subset; 0 = the full sets).")
    alignment_items: int = option(200, "General preference pairs (HH harmless) for alignment (0 = all 2,312).")
    drift_prompts: int = option(40, "Prompts whose base answers measure drift (0 = none).")
    qa_items: int = option(0, "TriviaQA questions answered in the chat template and judged by a rule (generative "
                              "knowledge; 0 = not measured).")
    refusal_items: int = option(0, "Harmful (HH harmless first turns) and harmless (AlpacaEval) requests each, whose "
                                   "replies are judged for refusal (generative alignment; 0 = not measured).")
    baselines: list[str] = option([], "Methods of the study every arm is also compared against, beside the base "
                                      "model and DPO (e.g. replay: what BAPO's hinge buys over plain replay).")
    frontier_scales: list[float] = option([], "LoRA scales at which every DPO adapter is also evaluated: its "
                                              "weakening frontier, drawn in the trade-off figure (empty = none).")
    balance: list[str] = option([], "Strategies that build each user's training pairs at --pair-budget (bapo "
                                    "balance): none, uniform, bpo; one cell per strategy (empty = the user's pairs as "
                                    "sampled).")
    pair_budget: int = option(64, "With balance: training pairs per user (B); pairs_per_user then sizes the pool "
                                  "they are chosen from (0 = all).")
    balance_responses: int = option(6, "With balance, simulated users: candidate responses per prompt (K).")
    judge: str = option("auto", "Heterogeneity judge: auto, reward, labels or base (see bapo.studies.users).")
    reward_model: str = option("", "Reward model for the heterogeneity judge (optional).")
    judge_pairs: int = option(512, "Pairs the heterogeneity judge reads per user (a seeded sample; 0 = all): a user "
                                   "with thousands of long pairs is judged in minutes, within its standard error.")
    workers: int = option(1, "Processes that score the study's models side by side, each with an equal share of "
                             "the CPU threads (for machines with more cores than one process uses well; 0.95-1.16x on a "
                             "2-core CPU; log-prob scores are the same at any thread count, greedy answers in "
                             "bfloat16 not: keep one setting through a study). Cells still train one after another. "
                             "1 = all in this process.")
    cluster: ClusterSettings = section(ClusterSettings, panel="Cluster (each cell and each model a Ray task)")
    sources: Sources = section(Sources, cli=("data_dir",), panel="Data")
    # Every cell trains with this config; the study sets its out, data.path, data.eval_path, loss.method and seed.
    # Its model, cache, device, dtype and length limits are the whole study's, evaluation included.
    train: TrainConfig = section(study_training, cli=("model", "cache_dir", "device", "dtype", "epochs", "lr",
                                                      "batch_size", "loss.beta", "loss.anchor_lambda"),
                                 panel="Training (every cell)")
    # How every model is scored; the study sets its model, adapters, suite, out, lengths, cache, device and dtype.
    eval: EvalConfig = section(EvalConfig, cli=False)

    def lambdas(self) -> dict[str, float]:
        """Each base-response arm's lambda: its own (``bapo:0.1``), or the study's ``--lambda``."""
        out = {}
        for m in self.methods:
            loss, weight = split_method(m)
            if method_losses(loss)[0] in BASE_TERMS:
                out[m] = self.train.loss.anchor_lambda if weight is None else weight
        return out

    def seeds_of(self, method: str) -> int:
        """How many seeds arm ``method`` has (``more_seeds``, else ``seeds``)."""
        return max([self.seeds] + [int(n) for arm, n in (x.rsplit("=", 1) for x in self.more_seeds) if arm == method])

    def validate(self) -> None:
        if not self.users:
            raise ConfigError("users: name at least one user")
        for u in self.users:
            parse_spec(u)
        if len({user_name(u) for u in self.users}) != len(self.users):
            raise ConfigError("users: a user is named twice")
        for m in self.methods:
            method, pref = method_losses(split_method(m)[0])
            if pref is not None and method not in BASE_TERMS:
                raise ConfigError(f"methods: '{m}': only a base-response method ({', '.join(BASE_TERMS)}) takes "
                                  "/PREF_LOSS, as in bapo/kto")
            LossConfig(method=method, pref_loss=pref or "dpo").validate()
        if not self.methods:
            raise ConfigError("methods: name at least one method")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError("methods: a method is named twice")
        if self.seeds < 1:
            raise ConfigError("seeds: at least 1")
        for x in self.more_seeds:
            arm, _, n = x.rpartition("=")
            if arm not in self.methods or not n.isdigit() or int(n) < self.seeds:
                raise ConfigError(f"more_seeds: '{x}': use ARM=N with ARM one of the study's methods "
                                  f"({', '.join(self.methods)}) and N at least seeds ({self.seeds})")
        for b in self.baselines:
            if b not in self.methods:
                raise ConfigError(f"baselines: '{b}' is not one of the study's methods ({', '.join(self.methods)})")
        for b in self.balance:
            if b not in STRATEGIES:
                raise ConfigError(f"balance: unknown strategy '{b}'; choose from {', '.join(STRATEGIES)}")
        if self.balance and (self.pair_budget < 1 or self.balance_responses < 2):
            raise ConfigError("pair_budget: at least 1 pair; balance_responses: at least 2")
        if self.workers < 1:
            raise ConfigError("workers: at least 1")
        self.cluster.validate()
        if self.cluster.executor == "ray":
            require_absolute(out=self.out, cache_dir=self.train.cache_dir)
        if self.candidate_samples < 0:
            raise ConfigError("candidate_samples: 0 or more")
        if self.holdout_pairs < 2 or self.pairs_per_user < 0:
            raise ConfigError("holdout_pairs: at least 2; pairs_per_user: 0 (all) or more")
        self.train.data.validate()
        self.train.loss.validate()
        self.train.base.validate()
        self.eval.validate()
