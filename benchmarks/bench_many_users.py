"""Many users in one job: ``bapo train --per-user`` against one ``bapo train`` process per user, same settings.

    python benchmarks/bench_many_users.py [--model smollm2-135m-instruct] [--users 16] [--pairs 16] [--repeats 1]

The users are DSP's domain users (../shared/data/personal/dsp_domain_preference_test.json): user i prefers the
answers written for domain i mod 4 over the original ones, each on its own ``--pairs`` queries (no query shared, so
no cache hit favours either side). Both sides train every user's BAPO adapter with the same seed and settings from
an empty bapo cache (the model converted beforehand, outside the timing): one ``--per-user`` process, or ``--users``
``bapo train`` processes one after another. Prints the machine, the command, wall time, training pairs/s and the peak
memory of the largest process of each side, and the speed-up per repeat (separate, per-user, separate, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import print_header, print_speedups, run_measured  # benchmarks/common.py, beside this script

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DOMAINS = ("academy", "business", "entertainment", "literature")


def write_users(folder: Path, users: int, pairs: int) -> int:
    rows = iter(json.loads((SHARED / "personal" / "dsp_domain_preference_test.json").read_text()))
    folder.mkdir(parents=True)
    for u in range(users):
        d, mine = DOMAINS[u % len(DOMAINS)], []
        while len(mine) < pairs:  # the next queries whose domain answer differs from the original one
            r = next(rows, None)
            if r is None:
                sys.exit(f"DSP has too few usable queries for {users} users x {pairs} pairs")
            c, rej = r["responses"].get(d, ""), r["responses"].get("normal", "")
            if c.strip() and rej.strip() and c.strip() != rej.strip():
                mine.append({"prompt": r["query"], "chosen": c, "rejected": rej})
        (folder / f"user{u:02d}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in mine))
    return users * pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    if not SHARED.exists():
        sys.exit(f"{SHARED} is absent: this benchmark reads DSP's domain users from ../shared/data")
    from bapo.runtime.models import resolve_model

    print_header()
    model = resolve_model(a.model)  # converted once here, outside the timing
    common = ["--model", model, "--method", "bapo", "--epochs", "1", "--batch-size", "4", "--holdout", "0.1",
              "--seed", "42", "--save-steps", "1000"]
    bapo = [sys.executable, "-m", "bapo.cli", "train"]
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "users"
        n = write_users(data, a.users, a.pairs)
        for rep in range(a.repeats):
            walls, peaks = [], []
            for f in sorted(data.iterdir()):
                w, p = run_measured(bapo + ["--data", str(f), "--out", f"{tmp}/sep{rep}/{f.stem}",
                                   "--cache-dir", f"{tmp}/cache_sep{rep}", *common])
                walls.append(w)
                peaks.append(p)
            sep_wall, sep_peak = sum(walls), max(peaks)
            one_wall, one_peak = run_measured(bapo + ["--per-user", "--data", str(data), "--out", f"{tmp}/one{rep}",
                                             "--cache-dir", f"{tmp}/cache_one{rep}", *common])
            trained = sum(1 for _ in Path(f"{tmp}/one{rep}").glob("*/run.json"))
            print(f"repeat {rep + 1} separate: {sep_wall:7.1f} s, {n / sep_wall:.2f} pairs/s, peak {sep_peak:.0f} MB "
                  f"(largest of {a.users} processes)")
            print(f"repeat {rep + 1} per-user: {one_wall:7.1f} s, {n / one_wall:.2f} pairs/s, peak {one_peak:.0f} MB "
                  f"({trained} adapters)")
            ratios.append(sep_wall / one_wall)
    print(f"{a.users} users x {a.pairs} pairs (held-out 10% of each user's prompts), bapo, 1 epoch, batch 4")
    print_speedups(ratios)


if __name__ == "__main__":
    main()
