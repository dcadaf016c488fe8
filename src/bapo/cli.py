"""The ``bapo`` command line. Every command is a thin shell over the Python API of the same name, and every option
of a command is generated from its config dataclass (:func:`bapo.options.cli_fields`): type, default and help are
declared once, in the field. ``--config FILE.yaml`` and ``--set section.field=value`` reach every field.

Errors a user can fix are printed as one line each (``FILE:LINE: field: what is wrong``) with exit code 2.
"""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console

from bapo.balancing.config import BalanceConfig
from bapo.core.fields import option
from bapo.data.config import ValidateConfig
from bapo.errors import (BapoError, ConfigError, Interrupted, environment_problem, interruptible,
                         notes_as_one_line)
from bapo.evaluation.config import EvalConfig
from bapo.options import CliField, cli_fields, cli_value, load_config, parse_sets
from bapo.runtime.config import cache_dir_option, model_option
from bapo.runtime.process import keep_freed_memory
from bapo.serve.config import ServeConfig
from bapo.studies.config import StudyConfig
from bapo.training.config import BaseRunConfig, TrainConfig

app = typer.Typer(
    help="Personalize an instruction-tuned LLM to a user's preferences without making it forget (BAPO, DPO family).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich",
)
err = Console(stderr=True)
out = Console(quiet=os.environ.get("RANK", "0") != "0")  # under torchrun / accelerate launch, the main process reports


@dataclass
class DemoConfig:
    """A ``bapo demo`` run."""

    out: str = option("demo_out", "Where the demo writes data, adapters and its table.")
    model: str = model_option()
    steps: int = option(30, "Optimizer steps per adapter.")
    cache_dir: str = cache_dir_option()


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _option(f: CliField) -> inspect.Parameter:
    tp = Optional[list[str]] if f.is_list else Optional[f.type]
    default = f" \\[{_shown(f.default)}]" if _shown(f.default) else ""  # escaped: rich would eat [word]
    info = typer.Option(*f.flags, help=f.help + default, rich_help_panel=f.panel, show_default=False)
    return inspect.Parameter(f.param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[tp, info])


def _param(name: str, tp: Any, info: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[tp, info])


# command name -> its config class: every command built from a config takes --config and --set (the configuration
# reference, docs/configuration.md, is generated from this table)
CONFIG_COMMANDS: dict[str, type] = {}


def config_command(name: str, cls: type, run: Callable[..., None], doc: str,
                   extra: tuple[inspect.Parameter, ...] = ()) -> None:
    """Register command ``name``: one option per exposed field of ``cls`` (plus ``--config`` and ``--set``), then
    ``run(cfg, **extra)`` with the config built from defaults < YAML < options < ``--set``."""
    fields = cli_fields(cls)
    params = [*extra, *map(_option, fields)]
    params.append(_param("config", Optional[Path], typer.Option(
        "--config", help=f"YAML config file ({cls.__name__}); options given here override it.")))
    params.append(_param("set_", Optional[list[str]], typer.Option(
        "--set", help="Any config field, e.g. --set loss.beta=0.2 (repeatable).")))
    CONFIG_COMMANDS[name] = cls

    def command(**kw: Any) -> None:
        given = [(f, kw.pop(f.param)) for f in fields]
        overrides = {f.path: cli_value(f, v) for f, v in given}
        overrides.update(parse_sets(kw.pop("set_", None)))
        try:
            cfg = load_config(cls, kw.pop("config", None), overrides)
        except ConfigError as e:  # name the option as the user typed it
            hit = next(((f, v) for f, v in given if v is not None and str(e).startswith(f.path)), None)
            if hit is None:
                raise
            flag, value = hit
            shown = ",".join(map(str, value)) if flag.is_list else value
            raise ConfigError(f"{flag.flags[0].split('/')[0]} {shown}: {e}") from None
        with interruptible():
            run(cfg, **kw)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    app.command(name)(command)


def _train(cfg: TrainConfig) -> None:
    from bapo.budget.run import train, train_each_user

    cfg.validate()
    if cfg.per_user:
        done = train_each_user(cfg)
        out.print(f"[green]{len(done.users)} adapters written to[/] {done.out}/<user> ({done.seconds:.0f} s); "
                  f"summary: {done.out / 'users.csv'}")
        for user, why in done.skipped.items():
            out.print(f"[yellow]skipped {user}:[/] {why}", highlight=False)
        none_left = [r.user for r in done.users if r.budget_scale == 0.0]
        if none_left:
            out.print(f"[yellow]warning:[/] only the base model met the forgetting budget for {', '.join(none_left)}: "
                      f"nothing of their taste survives (their adapters are at scale 0)", highlight=False)
        return
    result = train(cfg)
    what = "adapter" if cfg.finetune == "lora" else "model (Hugging Face directory)"
    out.print(f"[green]{what} written to[/] {result.out}  ({result.train_examples} {'rated answers' if cfg.loss.unpaired else 'pairs'}, "
              f"{result.steps} steps, {result.seconds:.0f} s; held out: {result.holdout_examples})")
    if result.budget_scale is not None:
        from bapo.budget.run import describe

        for line in describe(Path(result.out)):
            out.print(line, highlight=False)


def _base(cfg: BaseRunConfig) -> None:
    from bapo.training.base import base_responses

    result = base_responses(cfg)
    out.print(f"[green]{result.prompts} prompts answered; written to[/] {result.out}")


def _validate(cfg: ValidateConfig) -> None:
    from bapo.runtime.models import load_tokenizer, resolve_model
    from bapo.training.items import describe_data

    if not cfg.data.path:
        raise ConfigError("data.path: give the pairs to check with --data")
    cfg.data.validate()
    tok = load_tokenizer(resolve_model(cfg.model)) if cfg.model else None
    out.print(f"[green]ok[/]: {describe_data(cfg.data.path, cfg.data.split, cfg.data.user, tok, cfg.data)}")


def _eval(cfg: EvalConfig, more: list[str] | None = None) -> None:
    from bapo.evaluation.runner import evaluate

    cfg.adapters = [*cfg.adapters, *[a for item in more or [] for a in item.split(",") if a]]
    evaluate(cfg, console=out)


def _study(cfg: StudyConfig, flip_rate: str | None = None, dry_run: bool = False, so_far: bool = False) -> None:
    from bapo.studies.run import run_study

    if flip_rate:
        rates = [x.strip() for x in flip_rate.split(",") if x.strip()]
        for h in rates:
            try:
                float(h)
            except ValueError:
                raise ConfigError(f"--flip-rate {flip_rate}: expected fractions separated by commas") from None
        # alone, the flip users are the study's users; beside --users (or a config's users), they are added
        given = [] if cfg.users == StudyConfig().users else cfg.users
        cfg.users = given + [u for u in (f"flip:{float(h):g}" for h in rates) if u not in given]
    run_study(cfg, dry_run=dry_run, console=out, so_far=so_far)


def _balance(cfg: BalanceConfig) -> None:
    from bapo.balancing.run import balance

    balance(cfg, console=out)


def _serve(cfg: ServeConfig) -> None:
    from bapo.serve.server import serve

    serve(cfg)


def _demo(cfg: DemoConfig) -> None:
    from bapo.demo import run_demo

    run_demo(Path(cfg.out), model=cfg.model, steps=cfg.steps, cache_dir=cfg.cache_dir, console=out)


config_command("train", TrainConfig, _train, """Personalize the model with BAPO or any DPO-family loss: a LoRA adapter, or every weight.

    Example: [bold]bapo train --data alice.jsonl --out adapters/alice[/] (embedded model, method bapo).
    Runs the base-response step first when its cached outputs are missing. Writes a PEFT adapter (with
    [bold]--finetune full[/]: a Hugging Face model directory), config.yaml, metrics.jsonl, the train/holdout split and
    checkpoints to --out.
    """)
config_command("base", BaseRunConfig, _base, """The reference model answers every prompt and scores every response.

    Chosen, rejected and base responses are scored in the same pass, and everything is cached. A rerun reuses the cache; an interrupted run resumes. ``bapo train`` runs this step itself when needed.
    """)
config_command("validate", ValidateConfig, _validate, """Check a preference file without training.

    Every problem is one line, FILE:LINE: field: what is wrong, and the exit code is 2.""")
config_command("eval", EvalConfig, _eval, """The base model and adapters side by side: what was gained and kept.

    Every metric comes with n and a standard error; adapters also with the paired change against the base model
    and its 95% interval. The base model's scores are computed once and cached.
    """, extra=(inspect.Parameter("more", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Annotated[
        Optional[list[str]], typer.Argument(help="More adapter directories: --adapters a/ b/ c/ works.",
                                            show_default=False)]),))
config_command("study", StudyConfig, _study, """One adapter per (user, method, seed), all evaluated alike.

    Plots retention against heterogeneity.

    The paper's question: does forgetting grow with how far a user departs from general preference, and does BAPO
    hold it down? Writes table.md/.csv, study.json and figures to --out. Every step is cached, so rerunning an
    interrupted study continues it. Example: [bold]bapo study --users flip:0,flip:1 --methods dpo,bapo --dry-run[/]
    """, extra=(
    _param("flip_rate", Optional[str], typer.Option(help="Comma-separated fractions h: a user flip:h per value: general "
                                                         "pairs with a fraction h reversed by a rule (heterogeneity h). "
                                                         "Added to --users, or alone the study's users.")),
    _param("dry_run", bool, typer.Option("--dry-run", help="Print the plan, sizes and an estimated run time (from "
                                                          "nothing, and what the study's cache leaves); train nothing."),
           False),
    _param("so_far", bool, typer.Option("--so-far", help="The tables and figures of the adapters already scored "
                                                         "(from the cache; nothing trained or scored): a long study "
                                                         "read while it runs."), False)))
config_command("balance", BalanceConfig, _balance, """Spend a budget of B pairs between prompts (breadth) and pairs per prompt (depth).

    Strategies: none (B prompts, one pair each), uniform (P prompts x D pairs) and bpo (after BPO, Wang et al., NAACL 2025: representative prompts by embedding clusters, pairs by gradient clusters).

    Writes OUT/pairs.jsonl (TRL format, for bapo train) and OUT/report.json (what was kept and why).

    Example: [bold]bapo balance --data prompts.jsonl --judge psoups:concise --budget 64 --strategy bpo --out balanced/[/]
    """)
config_command("serve", ServeConfig, _serve, """Serve the base model and every user's adapter behind an OpenAI API.

    Example: [bold]bapo serve --adapters adapters/[/], then ask model "alice" at http://127.0.0.1:8000/v1. Requests of
    different users are answered together in shared batches; adapter_scale (0..1) in a request dials its adapter down.
    """)
config_command("demo", DemoConfig, _demo, """DPO and two BAPO adapters for a user who loves bullet lists (6.9 min on a 2-core CPU, bfloat16).

    Trains the three on the same pairs, compares them on held-out prompts, runs bapo eval and writes a report.""")


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="A results directory written by bapo eval (or its results.json).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the PNG plots and report.html.")] = Path("report"),
    samples: Annotated[int, typer.Option(help="Prompts per generative task shown with every model's answer.", min=0)] = 5,
) -> None:
    """Plots and one self-contained HTML page from bapo eval's results."""
    from bapo.evaluation.report import write_report

    with interruptible():
        page = write_report(results, out_dir, samples)
    out.print(f"[green]report written to[/] {page}")


export_app = typer.Typer(help="Write what other engines load as they are: vLLM, SGLang, LoRAX, transformers + PEFT.",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("model")
def export_model_command(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A new folder for the Hugging Face model directory.")],
    model: Annotated[str, typer.Option(help="The model: smollm2-135m-instruct (embedded), a local Hugging Face "
                                            "directory or a hub id.")] = "smollm2-135m-instruct",
    cache_dir: Annotated[str, typer.Option(help="Cache folder (default ~/.cache/bapo).")] = "",
) -> None:
    """The model bapo loads (the embedded one included) as a plain Hugging Face model directory."""
    from bapo.runtime.export import export_model

    with interruptible():
        done = export_model(model, out_dir, cache_dir)
    out.print(f"[green]model written to[/] {done.out}")


@export_app.command("adapter")
def export_adapter_command(
    adapter: Annotated[Path, typer.Argument(help="An adapter directory written by bapo train.")],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A new folder for the exported adapter or model.")],
    scale: Annotated[float, typer.Option(help="The adapter's scale, built into its weights: 1 as trained, 0 the base "
                                              "model (what --adapter-scale and adapter_scale dial).")] = 1.0,
    merge: Annotated[bool, typer.Option("--merge", help="Write a full model directory (base weights plus the scaled "
                                                        "update, float32) instead of an adapter.")] = False,
    model: Annotated[str, typer.Option(help="The base model, for --merge when the adapter does not record it.")] = "",
    cache_dir: Annotated[str, typer.Option(help="Cache folder (default ~/.cache/bapo).")] = "",
) -> None:
    """A standard PEFT adapter with its scale built in (or, with --merge, a merged model directory)."""
    from bapo.runtime.export import export_adapter

    with interruptible():
        done = export_adapter(adapter, out_dir, scale, merge, model, cache_dir)
    what = "merged model" if done.kind == "model" else "adapter"
    out.print(f"[green]{what} at scale {scale:g} written to[/] {done.out}")


keys_app = typer.Typer(help="Per-user API keys for bapo serve --keys: each key uses only its own adapters.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("add")
def keys_add_command(
    file: Annotated[Path, typer.Argument(help="The keys file (YAML), created if missing.")],
    name: Annotated[str, typer.Option(help="Who holds the key.")],
    adapters: Annotated[str, typer.Option(help="Comma-separated adapter names or patterns the key may use "
                                               "(alice,alice-*).")] = "",
    base: Annotated[bool, typer.Option(help="May the key ask the base model.")] = True,
) -> None:
    """Make a new random key, add its sha256 to FILE and print the key once (it is stored nowhere)."""
    from bapo.serve.keys import add_key

    key = add_key(file, name, [a.strip() for a in adapters.split(",") if a.strip()], base)
    err.print(f"[green]key for {name} added to[/] {file} [dim](shown once: give it to {name}, it is not stored)[/]",
              highlight=False)
    print(key)


data_app = typer.Typer(help="The public data sets the studies read.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("fetch")
def data_fetch_command(
    to: Annotated[Optional[Path], typer.Option(help="Where the layout goes (default: the data folder the studies look "
                                                    "in, ~/.cache/bapo/data).")] = None,
    mirror: Annotated[str, typer.Option(help="Take every file from URL/<layout path> instead of its public home.")] = "",
    only: Annotated[str, typer.Option(help="Comma-separated layout paths to fetch (default: all).")] = "",
) -> None:
    """Download the data sets the studies use from their public homes, checked by sha256; a rerun resumes."""
    from bapo.data.fetch import fetch
    from bapo.data.users import default_data_dir

    target = to or default_data_dir(fetched=True)
    names = tuple(x.strip() for x in only.split(",") if x.strip())

    def show(d, status):
        mark = "[green]ok[/]" if status in ("ok", "cached") else "[red]failed[/]"
        out.print(f"{mark} {d.path}  ({status if status in ('ok', 'cached') else 'see below'}; license: {d.license})",
                  highlight=False)

    with interruptible():
        results = fetch(target, mirror, names, progress=show)
    failed = [r for r in results if not r.ok]
    if not failed:
        out.print(f"[green]{len(results)} data sets in[/] {target}")
        return
    if all("cannot download" in r.status for r in failed) and len(failed) > 1:
        raise BapoError(f"data fetch: {len(failed)} of {len(results)} data sets could not be downloaded (offline? "
                        f"first: {failed[0].status})")
    raise BapoError("\n".join(f"data fetch: {r.data.path}: {r.status}" for r in failed))


def main() -> None:
    try:
        run_command()
    finally:
        if "torch.distributed" in sys.modules:  # only a command that loaded torch can have made a process group
            from bapo.runtime import distributed

            distributed.shutdown()


def run_command() -> None:
    keep_freed_memory()
    notes_as_one_line(lambda text: err.print(f"[yellow]note:[/] {text}", highlight=False, soft_wrap=True))
    try:
        # Standalone mode: typer reports its own usage errors (the usage line and one error line, exit 2) and exits.
        # bapo does not catch click's exception classes itself: typer >= 0.29 carries a private copy of click whose
        # classes the click package's do not match, and catching the wrong ones printed a traceback.
        app()
    except BapoError as e:
        for line in str(e).splitlines():
            err.print(f"[red]error:[/] {line}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - only errors of the environment are turned into one line
        problem = environment_problem(e)
        if problem is None:
            raise
        err.print(f"[red]error:[/] {problem}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
