"""The ``bapo`` command line. Every command is a thin shell over the Python API of the same name.

Errors a user can fix are printed as one line each (``FILE:LINE: field: what is wrong``) with exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console

from bapo.config import BaseResponseConfig, TrainConfig, apply_overrides, load_yaml
from bapo.errors import BapoError, ConfigError

app = typer.Typer(
    help="Personalize an instruction-tuned LLM to a user's preferences without making it forget (BAPO, DPO family).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich",
)
err = Console(stderr=True)
out = Console()

Opt = typer.Option
MODEL_HELP = "smollm2-135m-instruct (embedded default), a local Hugging Face directory, or a hub id."


def _parse_sets(sets: list[str] | None) -> dict[str, str]:
    result = {}
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, for example --set loss.beta=0.2")
        k, v = item.split("=", 1)
        result[k.strip()] = v.strip()
    return result


def _load(cls, config: Optional[Path]):
    return load_yaml(config, cls) if config else cls()


@app.command()
def train(
    data: Annotated[Optional[str], Opt(help="Preference pairs: JSONL/JSON/CSV/Parquet or a hub dataset id.", rich_help_panel="Data")] = None,
    out_dir: Annotated[Optional[str], Opt("--out", help="Output directory for the adapter and run files.")] = None,
    model: Annotated[Optional[str], Opt(help=MODEL_HELP)] = None,
    method: Annotated[Optional[str], Opt(help="bapo, or a pairwise loss: dpo, cdpo, ipo, hinge, robust, simpo.", rich_help_panel="Loss")] = None,
    config: Annotated[Optional[Path], Opt(help="YAML config file; options given here override it.")] = None,
    eval_data: Annotated[Optional[str], Opt(help="Held-out pairs file (default: a seeded --holdout split).", rich_help_panel="Data")] = None,
    holdout: Annotated[Optional[float], Opt(help="Fraction of prompts held out for evaluation [0.1].", rich_help_panel="Data")] = None,
    user: Annotated[Optional[str], Opt(help="Train on this user_id's records only.", rich_help_panel="Data")] = None,
    max_length: Annotated[Optional[int], Opt(help="Longest prompt + response in tokens [512].", rich_help_panel="Data")] = None,
    max_prompt_length: Annotated[Optional[int], Opt(help="Longest prompt in tokens [256].", rich_help_panel="Data")] = None,
    on_overlong: Annotated[Optional[str], Opt(help="truncate or reject over-long texts \\[truncate].", rich_help_panel="Data")] = None,
    pref_loss: Annotated[Optional[str], Opt(help="With --method bapo: the pairwise loss under the anchor \\[dpo].", rich_help_panel="Loss")] = None,
    beta: Annotated[Optional[float], Opt(help="DPO beta [0.1].", rich_help_panel="Loss")] = None,
    anchor_lambda: Annotated[Optional[float], Opt("--lambda", "--anchor-lambda", help="BAPO anchor weight lambda [1.0].", rich_help_panel="Loss")] = None,
    anchor: Annotated[Optional[str], Opt(help="Anchor shape: hinge (paper), abs, squared \\[hinge].", rich_help_panel="Loss")] = None,
    anchor_reduction: Annotated[Optional[str], Opt(help="Anchor log-probs: sum (paper) or mean per token \\[sum].", rich_help_panel="Loss")] = None,
    rpo_alpha: Annotated[Optional[float], Opt(help="Weight of an NLL term on chosen (RPO) [0].", rich_help_panel="Loss")] = None,
    label_smoothing: Annotated[Optional[float], Opt(help="Label-flip rate for cdpo/robust [0.1].", rich_help_panel="Loss")] = None,
    simpo_gamma: Annotated[Optional[float], Opt(help="SimPO margin gamma [0.5].", rich_help_panel="Loss")] = None,
    lora_r: Annotated[Optional[int], Opt(help="LoRA rank [16].", rich_help_panel="LoRA")] = None,
    lora_alpha: Annotated[Optional[int], Opt(help="LoRA alpha [32].", rich_help_panel="LoRA")] = None,
    lora_dropout: Annotated[Optional[float], Opt(help="LoRA dropout [0].", rich_help_panel="LoRA")] = None,
    lora_targets: Annotated[Optional[str], Opt(help="Comma-separated module names, or all-linear \\[all-linear].", rich_help_panel="LoRA")] = None,
    epochs: Annotated[Optional[float], Opt(help="Passes over the training pairs [1].", rich_help_panel="Optimization")] = None,
    max_steps: Annotated[Optional[int], Opt(help="Stop after N optimizer steps (-1: use epochs) [-1].", rich_help_panel="Optimization")] = None,
    batch_size: Annotated[Optional[int], Opt(help="Pairs per step per device [4].", rich_help_panel="Optimization")] = None,
    grad_accum: Annotated[Optional[int], Opt(help="Gradient accumulation steps [1].", rich_help_panel="Optimization")] = None,
    lr: Annotated[Optional[float], Opt(help="Peak learning rate [1e-4].", rich_help_panel="Optimization")] = None,
    seed: Annotated[Optional[int], Opt(help="Seed for split, shuffling and init [42].", rich_help_panel="Optimization")] = None,
    save_steps: Annotated[Optional[int], Opt(help="Checkpoint every N steps [50].", rich_help_panel="Optimization")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue from the newest checkpoint in OUT/checkpoints.", rich_help_panel="Optimization")] = False,
    base_max_new_tokens: Annotated[Optional[int], Opt(help="Longest base response [96].", rich_help_panel="Base responses")] = None,
    base_sample: Annotated[Optional[bool], Opt("--base-sample/--base-greedy", help="Sample base responses instead of greedy.", rich_help_panel="Base responses")] = None,
    base_temperature: Annotated[Optional[float], Opt(help="Sampling temperature [0.7].", rich_help_panel="Base responses")] = None,
    base_num: Annotated[Optional[int], Opt(help="Base responses per prompt (needs --base-sample) [1].", rich_help_panel="Base responses")] = None,
    cache_dir: Annotated[Optional[str], Opt(help="Cache directory \\[~/.cache/bapo or $BAPO_CACHE_DIR].")] = None,
    set_: Annotated[Optional[list[str]], Opt("--set", help="Any config field, e.g. --set lora.alpha=16 (repeatable).")] = None,
) -> None:
    """Train a personalized LoRA adapter with BAPO or any DPO-family loss.

    Example: [bold]bapo train --data alice.jsonl --out adapters/alice[/] (embedded model, method bapo).
    Runs the base-response step first when its cached outputs are missing. Writes a PEFT adapter, config.yaml,
    metrics.jsonl, the train/holdout split and checkpoints to --out.
    """
    from bapo.training import train as run_train

    overrides = {
        "data.path": data, "out": out_dir, "model": model, "loss.method": method, "data.eval_path": eval_data,
        "data.holdout": holdout, "data.user": user, "data.max_length": max_length,
        "data.max_prompt_length": max_prompt_length, "data.on_overlong": on_overlong, "loss.pref_loss": pref_loss,
        "loss.beta": beta, "loss.anchor_lambda": anchor_lambda, "loss.anchor": anchor,
        "loss.anchor_reduction": anchor_reduction, "loss.rpo_alpha": rpo_alpha, "loss.label_smoothing": label_smoothing,
        "loss.simpo_gamma": simpo_gamma, "lora.r": lora_r, "lora.alpha": lora_alpha, "lora.dropout": lora_dropout,
        "lora.target_modules": lora_targets, "epochs": epochs, "max_steps": max_steps, "batch_size": batch_size,
        "grad_accum": grad_accum, "lr": lr, "seed": seed, "save_steps": save_steps, "resume": resume or None,
        "base.max_new_tokens": base_max_new_tokens, "base.do_sample": base_sample,
        "base.temperature": base_temperature, "base.num_responses": base_num, "cache_dir": cache_dir,
        **_parse_sets(set_),
    }
    cfg = apply_overrides(_load(TrainConfig, config), overrides)
    cfg.validate()
    result = run_train(cfg)
    out.print(f"[green]adapter written to[/] {result.out}  ({result.train_examples} pairs, {result.steps} steps, "
              f"{result.seconds:.0f} s; held out: {result.holdout_examples} pairs)")


@app.command()
def base(
    data: Annotated[str, Opt(help="Preference pairs (their prompts are answered).")],
    out_file: Annotated[Path, Opt("--out", help="JSONL file of base responses and reference log-probs.")],
    model: Annotated[str, Opt(help=MODEL_HELP)] = "smollm2-135m-instruct",
    config: Annotated[Optional[Path], Opt(help="YAML file of generation settings (BaseResponseConfig).")] = None,
    max_new_tokens: Annotated[Optional[int], Opt(help="Longest base response [96].")] = None,
    sample: Annotated[Optional[bool], Opt("--sample/--greedy", help="Sample instead of greedy decoding.")] = None,
    temperature: Annotated[Optional[float], Opt(help="Sampling temperature [0.7].")] = None,
    num: Annotated[Optional[int], Opt(help="Base responses per prompt (needs --sample) [1].")] = None,
    batch_size: Annotated[Optional[int], Opt(help="Prompts per generation batch [16].")] = None,
    max_length: Annotated[int, Opt(help="Longest prompt + response in tokens.")] = 512,
    max_prompt_length: Annotated[int, Opt(help="Longest prompt in tokens.")] = 256,
    cache_dir: Annotated[Optional[str], Opt(help="Cache directory \\[~/.cache/bapo].")] = None,
) -> None:
    """Let the reference model answer every prompt and score chosen, rejected and base responses (cached).

    A rerun reuses the cache; an interrupted run resumes. ``bapo train`` runs this step itself when needed.
    """
    from bapo.base import run_base_step
    from bapo.config import DataConfig

    gen = apply_overrides(_load(BaseResponseConfig, config), {
        "max_new_tokens": max_new_tokens, "do_sample": sample, "temperature": temperature, "num_responses": num,
        "batch_size": batch_size})
    n = run_base_step(model, data, out_file, gen, DataConfig(path=data, max_length=max_length,
                                                              max_prompt_length=max_prompt_length), cache_dir or "")
    out.print(f"[green]{n} prompts answered; written to[/] {out_file}")


@app.command()
def validate(
    data: Annotated[str, Opt(help="Preference pairs to check.")],
    model: Annotated[Optional[str], Opt(help="Also check token lengths with this model's tokenizer.")] = None,
    max_length: Annotated[int, Opt(help="Longest prompt + response in tokens.")] = 512,
    max_prompt_length: Annotated[int, Opt(help="Longest prompt in tokens.")] = 256,
) -> None:
    """Check a preference file without training: every problem as FILE:LINE: field: what is wrong."""
    from bapo.config import DataConfig
    from bapo.data import load_pairs

    pairs = load_pairs(data)
    if model:
        from bapo.models import load_tokenizer, resolve_model
        from bapo.tokens import Renderer, encode_pairs

        dc = DataConfig(path=data, max_length=max_length, max_prompt_length=max_prompt_length, on_overlong="reject")
        dc.validate()
        encode_pairs(pairs, Renderer(load_tokenizer(resolve_model(model)), dc))
    users = sorted({p.user_id for p in pairs if p.user_id is not None})
    out.print(f"[green]ok[/]: {len(pairs)} pairs, {len({p.prompt_key for p in pairs})} prompts"
              + (f", users: {', '.join(users)}" if users else ""))


@app.command("eval")
def eval_(
    more: Annotated[Optional[list[str]], typer.Argument(help="More adapter directories: --adapters a/ b/ c/ works.", show_default=False)] = None,
    adapters: Annotated[Optional[list[str]], typer.Option("--adapters", help="Adapter directories to compare with the base model.")] = None,
    model: Annotated[str, Opt(help=MODEL_HELP)] = "smollm2-135m-instruct",
    suite: Annotated[str, Opt(help="default (data shipped with bapo) or a suite YAML file.")] = "default",
    out_dir: Annotated[Path, Opt("--out", help="Output directory for results.json/.csv/.md.")] = Path("results"),
    adapter_scale: Annotated[Optional[str], Opt(help="Comma-separated LoRA scales, e.g. 0,0.5,1 [1].")] = None,
    reward_model: Annotated[Optional[str], Opt(help="Sequence-classification reward model scoring generated answers.")] = None,
    lm_eval_tasks: Annotated[Optional[str], Opt(help="Comma-separated lm-evaluation-harness tasks (needs lm-eval).")] = None,
    batch_size: Annotated[int, Opt(help="Sequences per scoring batch.")] = 16,
    merge: Annotated[bool, Opt("--merge/--no-merge", help="Merge each adapter into the weights while scoring it "
                                "(faster; holds a copy of the weights it changes).")] = True,
    cache_dir: Annotated[Optional[str], Opt(help="Cache directory \\[~/.cache/bapo].")] = None,
) -> None:
    """Evaluate the base model and adapters side by side: personalization gained, knowledge and alignment kept.

    Every metric comes with n and a standard error; adapters also with the paired change against the base model
    and its 95% interval. The base model's scores are computed once and cached.
    """
    from bapo.compare import EvalConfig, run_eval

    try:
        scales = [float(x) for x in adapter_scale.split(",")] if adapter_scale else [1.0]
    except ValueError:
        raise ConfigError(f"--adapter-scale {adapter_scale}: expected numbers separated by commas") from None
    names = [a for item in [*(adapters or []), *(more or [])] for a in item.split(",") if a]
    run_eval(EvalConfig(model=model, adapters=names, suite=suite, out=str(out_dir), adapter_scales=scales,
                        reward_model=reward_model or "", batch_size=batch_size, merge_adapters=merge,
                        cache_dir=cache_dir or "", lm_eval_tasks=[t for t in (lm_eval_tasks or "").split(",") if t]), console=out)


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="A results directory written by bapo eval (or its results.json).")],
    out_dir: Annotated[Path, Opt("--out", help="Where to write the PNG plots and report.html.")] = Path("report"),
) -> None:
    """Plots and one self-contained HTML page from bapo eval's results."""
    from bapo.report import write_report

    page = write_report(results, out_dir)
    out.print(f"[green]report written to[/] {page}")


@app.command()
def study(
    users: Annotated[Optional[str], Opt(help="Comma-separated users: dsp:DOMAIN, alpacaeval:concise|verbose, vpl:helpful|harmless, flip:H[:length|hash], psoups:PROFILE \\[flip:0,flip:0.5,flip:1,vpl:harmless].")] = None,
    flip_rate: Annotated[Optional[str], Opt(help="Comma-separated fractions h: a user flip:h per value: general pairs with a fraction h reversed by a rule (heterogeneity h). Added to --users, or alone the study's users.")] = None,
    methods: Annotated[Optional[str], Opt(help="Comma-separated losses to compare \\[dpo,bapo].")] = None,
    seeds: Annotated[Optional[int], Opt(help="Seeds per (user, method) [1].")] = None,
    out_dir: Annotated[Optional[str], Opt("--out", help="Output directory \\[study].")] = None,
    model: Annotated[Optional[str], Opt(help=MODEL_HELP)] = None,
    config: Annotated[Optional[Path], Opt(help="YAML config file (bapo.study.StudyConfig); options given here override it.")] = None,
    data_dir: Annotated[Optional[str], Opt(help="Data sets in the layout of ../shared/data [../shared/data].")] = None,
    pairs_per_user: Annotated[Optional[int], Opt(help="Training pairs per user [64].", rich_help_panel="Sizes")] = None,
    holdout_pairs: Annotated[Optional[int], Opt(help="Held-out pairs per user [32].", rich_help_panel="Sizes")] = None,
    epochs: Annotated[Optional[float], Opt(help="Passes over each user's pairs [2].", rich_help_panel="Sizes")] = None,
    eval_items: Annotated[Optional[int], Opt(help="Items per knowledge task (ARC-Easy, PIQA); 0 = full sets [200].", rich_help_panel="Sizes")] = None,
    alignment_items: Annotated[Optional[int], Opt(help="HH-harmless pairs for alignment; 0 = all [200].", rich_help_panel="Sizes")] = None,
    judge: Annotated[Optional[str], Opt(help="Heterogeneity judge: auto, reward, labels, base \\[auto].")] = None,
    reward_model: Annotated[Optional[str], Opt(help="Reward model for the heterogeneity judge.")] = None,
    cache_dir: Annotated[Optional[str], Opt(help="Cache directory \\[~/.cache/bapo].")] = None,
    set_: Annotated[Optional[list[str]], Opt("--set", help="Any config field, e.g. --set lr=1e-4 (repeatable).")] = None,
    dry_run: Annotated[bool, Opt("--dry-run", help="Print the plan, sizes and an estimated run time; train nothing.")] = False,
) -> None:
    """Train one adapter per (user, method, seed), evaluate them all, and plot retention against heterogeneity.

    The paper's question: does forgetting grow with how far a user departs from general preference, and does BAPO
    hold it down? Writes table.md/.csv, study.json and figures to --out. Every step is cached, so rerunning an
    interrupted study continues it. Example: [bold]bapo study --users flip:0,flip:1 --methods dpo,bapo --dry-run[/]
    """
    from bapo.study import StudyConfig, run_study

    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    overrides = {"users": split(users), "methods": split(methods), "seeds": seeds, "out": out_dir, "model": model,
                 "sources.data_dir": data_dir, "pairs_per_user": pairs_per_user, "holdout_pairs": holdout_pairs,
                 "epochs": epochs, "eval_items": eval_items, "alignment_items": alignment_items, "judge": judge, "reward_model": reward_model,
                 "cache_dir": cache_dir, **_parse_sets(set_)}
    cfg = apply_overrides(_load(StudyConfig, config), overrides)
    if flip_rate:
        rates = split(flip_rate)
        for h in rates:
            try:
                float(h)
            except ValueError:
                raise ConfigError(f"--flip-rate {flip_rate}: expected fractions separated by commas") from None
        given = cfg.users if users else []
        cfg.users = given + [u for u in (f"flip:{float(h):g}" for h in rates) if u not in given]
    run_study(cfg, dry_run=dry_run, console=out)


@app.command()
def demo(
    out_dir: Annotated[Path, Opt("--out", help="Where the demo writes data, adapters and its table.")] = Path("demo_out"),
    model: Annotated[str, Opt(help=MODEL_HELP)] = "smollm2-135m-instruct",
    steps: Annotated[int, Opt(help="Optimizer steps per adapter.")] = 30,
    cache_dir: Annotated[Optional[str], Opt(help="Cache directory \\[~/.cache/bapo].")] = None,
) -> None:
    """Train DPO and two BAPO adapters for a simulated user who loves bullet lists, then compare them (about 10 min)."""
    from bapo.demo import run_demo

    run_demo(out_dir, model=model, steps=steps, cache_dir=cache_dir or "", console=out)


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except BapoError as e:
        for line in str(e).splitlines():
            err.print(f"[red]error:[/] {line}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
