"""Where one model's evaluation in a study goes: task by task, and inside scoring.

    python benchmarks/profile_eval.py [--study studies/decisive.yaml] [--items 200] [--adapter DIR]

Builds the study's own suite, scores a seeded subset of ``--items`` items of each task with the base model (or
``--adapter``, merged as ``bapo eval`` does) from an empty cache, and prints per task: wall time, positions the
transformer body ran (padding included) against the tokens the items hold, the head's rows, the weights' matmul
GFLOP/s (2 x parameters per position; attention scores not counted) against the measured matmul peak, and the task's
projected share of one model's evaluation at the study's full sizes. Then the torch profiler's top operators over
one scoring batch of each scored kind, and a check that scoring with 1 and with 2 threads gives bit-identical log-probs
(whether a study could split its models over two 1-thread processes without changing any number).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from common import Counter, matmul_peak_gflops, print_header  # benchmarks/common.py, beside this script


def item_tokens(task, tok, renderer) -> int:
    """Tokens the items hold, each shared prompt once (what a perfectly packed, unpadded scorer would run)."""
    kind = task.spec.kind
    if kind == "mc":
        return sum(len(tok(it.context)["input_ids"]) + sum(len(tok(" " + c, add_special_tokens=False)["input_ids"])
                                                          for c in it.choices) for it in task.items)
    if kind == "general_pairs":
        n = 0
        for it in task.items:
            c = renderer.encode(it.messages, it.chosen, "", "", [], truncate=True)
            r = renderer.encode(it.messages, it.rejected, "", "", [], truncate=True)
            n += len(c.prompt) + len(c.response) + len(r.response)
        return n
    if kind == "drift":
        seqs, _ = task.prepared
        return sum(len(s.ids) for s in seqs)
    return 0  # generative: prompt + answer tokens depend on what the model writes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(Path(__file__).resolve().parent.parent / "studies" / "decisive.yaml"))
    ap.add_argument("--items", type=int, default=200, help="items per task (a seeded subset)")
    ap.add_argument("--adapter", default="")
    ap.add_argument("--batch-size", type=int, default=0, help="scoring batch (default: the study's)")
    args = ap.parse_args()

    from bapo.evaluation.tasks import Scorer, load_suite, load_task
    from bapo.options import load_config
    from bapo.runtime.adapters import applied
    from bapo.runtime.reference import open_reference
    from bapo.studies.config import StudyConfig
    from bapo.studies.plan import plan, study_suite

    print_header()
    cfg = load_config(StudyConfig, args.study, {})
    t = cfg.train
    tmp = Path(tempfile.mkdtemp(prefix="profile_eval."))
    full = load_suite(str(study_suite(cfg, tmp / "suite.yaml"))).tasks
    batch = args.batch_size or cfg.eval.batch_size
    peak = matmul_peak_gflops()
    ref = open_reference(t.model, t.data.max_length, t.data.max_prompt_length, str(tmp / "cache"), t.device, t.dtype)
    base = ref.model.get_base_model() if hasattr(ref.model, "get_base_model") else ref.model
    body, head = base.get_decoder(), base.get_output_embeddings()
    body_params = sum(m.weight.numel() for m in body.modules() if isinstance(m, torch.nn.Linear))
    head_params = head.weight.numel()
    counter = Counter(body, head)
    models = len(plan(cfg)) + 1
    print(f"study: {args.study} ({models} models: the base and {models - 1} adapters); batch {batch}; "
          f"max length {t.data.max_length}; measured fp32 matmul peak {peak:.1f} GFLOP/s")
    print(f"model: {t.model}; {body_params / 1e6:.1f}M parameters in the body's linear layers, "
          f"{head_params / 1e6:.1f}M in the output head{'; adapter ' + args.adapter if args.adapter else ''}")

    scorer = Scorer(ref, batch)
    rows, profiled = [], {}
    tasks = []
    for spec in full:  # prepared by the reference itself, before any adapter is applied
        n_full = len(load_task(spec).items)
        task = load_task(dataclasses.replace(spec, limit=min(args.items, n_full), seed=spec.seed))
        if task.kind.prepare is not None:
            task.prepared = task.kind.prepare(task, scorer)
        tasks.append((spec, n_full, task))
    with applied(ref.model, args.adapter or None, 1.0, True) as model:
        for spec, n_full, task in tasks:
            counter.take()
            t0 = time.perf_counter()
            task.kind.score(model, task, scorer, lambda n: None)
            wall = time.perf_counter() - t0
            positions, head_rows = counter.take()
            gflop = (2 * body_params * positions + 2 * head_params * head_rows) / 1e9
            tokens = item_tokens(task, ref.tokenizer, ref.renderer)
            rows.append((spec, len(task.items), n_full, wall, positions, tokens, head_rows, gflop))
            if spec.kind in ("mc", "general_pairs") and spec.kind not in profiled:
                profiled[spec.kind] = task

        print(f"\n{'task':<18} {'items':>11} {'wall s':>7} {'s/item':>7} {'positions':>9} {'item tok':>9} "
              f"{'head rows':>9} {'GFLOP/s':>8} {'of peak':>7} {'full-size s':>11}")
        total = 0.0
        projected = []
        for spec, n, n_full, wall, positions, tokens, head_rows, gflop in rows:
            full_s = wall * n_full / n
            total += full_s
            projected.append((spec.name, full_s))
            print(f"{spec.name:<18} {n:>5}/{n_full:<5} {wall:>7.1f} {wall / n:>7.3f} {positions:>9} "
                  f"{tokens or '-':>9} {head_rows:>9} {gflop / wall:>8.1f} {gflop / wall / peak:>7.0%} {full_s:>11.0f}")
        print(f"one model's evaluation at full size: ~{total:.0f} s; x {models} models = ~{total * models / 60:.0f} min "
              "(plus each adapter's held-out pairs)")
        for name, s in sorted(projected, key=lambda x: -x[1]):
            print(f"  {name}: {s / total:.0%}")

        from torch.profiler import ProfilerActivity, profile

        for kind, task in profiled.items():
            sub = dataclasses.replace(task, items=task.items[: batch])
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                sub.kind.score(model, sub, scorer, lambda n: None)
            print(f"\ntorch profiler, one scoring batch of {kind} ({len(sub.items)} items), top operators by own time:")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=40))

        threads_check(model, profiled.get("mc"), scorer)


def threads_check(model, task, scorer) -> None:
    """Per-choice log-probs with 1 thread and with the default threads: bit-identical or not."""
    if task is None:
        return
    from bapo.core.logprobs import score
    from bapo.core.tokens import Encoded

    tok = scorer.ref.tokenizer
    seqs = [Encoded(tuple(tok(it.context)["input_ids"]), tuple(tok(" " + c, add_special_tokens=False)["input_ids"]))
            for it in task.items for c in it.choices]
    threads = torch.get_num_threads()
    a = score(model, seqs, tok.pad_token_id, scorer.batch_size * 2)
    torch.set_num_threads(1)
    b = score(model, seqs, tok.pad_token_id, scorer.batch_size * 2)
    torch.set_num_threads(threads)
    diff = max(abs(x[0] - y[0]) for x, y in zip(a, b))
    same = sum(x == y for x, y in zip(a, b))
    print(f"\nthreads check on {len(seqs)} choices: {threads} threads vs 1 thread: {same}/{len(seqs)} log-probs "
          f"bit-identical, largest difference {diff:.2e} nats")


if __name__ == "__main__":
    main()
