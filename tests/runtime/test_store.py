"""The SQLite cache: keyed entries that survive a reopen and are shared by two handles on one file."""

from bapo.runtime.store import Store, make_key


def test_keys_are_deterministic_and_order_sensitive():
    assert make_key("gen", "fp", [1, 2]) == make_key("gen", "fp", [1, 2])
    assert make_key("gen", "fp", [1, 2]) != make_key("gen", "fp", [2, 1]) != make_key("logp", "fp", [1, 2])
    assert len(make_key("x")) == 64


def test_entries_round_trip_and_persist(tmp_path):
    path = tmp_path / "c" / "ref.sqlite"
    s = Store(path)
    s.put_generations({"a": ["one", "two"]})
    s.put_logps({"k1": (-3.5, 4), "k2": (-0.25, 1)})
    s.put_eval("e", {"acc": [1.0, 0.0]})
    assert s.get_generations(["a", "missing"]) == {"a": ["one", "two"]}
    assert s.get_logps(["k2", "k1", "k1"]) == {"k1": (-3.5, 4), "k2": (-0.25, 1)}
    assert s.get_eval("e") == {"acc": [1.0, 0.0]} and s.get_eval("nope") is None
    s.close()
    again = Store(path)  # a rerun finds everything
    assert again.get_logps(["k1"]) == {"k1": (-3.5, 4)} and again.get_generations(["a"]) == {"a": ["one", "two"]}


def test_two_handles_see_each_others_writes_and_many_keys_are_fetched_in_chunks(tmp_path):
    a, b = Store(tmp_path / "s.sqlite"), Store(tmp_path / "s.sqlite")
    a.put_logps({f"k{i}": (float(i), i) for i in range(1200)})  # more than one 500-key query
    got = b.get_logps([f"k{i}" for i in range(1200)])
    assert len(got) == 1200 and got["k1199"] == (1199.0, 1199)
    b.put_eval("x", {"m": [0.5]})
    assert a.get_eval("x") == {"m": [0.5]}


# Several processes at once (torchrun ranks, a study's workers). Each child reports its errors through a queue, so a
# failure names what went wrong instead of a bare exit code. ``spawn``: how bapo's own workers start.

ROUNDS = 20


def _own_keys(root: str, i: int, barrier, errors) -> None:
    """One process of 8: in every round, open that round's new store at the same instant as the others, write its
    own keys and read them back."""
    try:
        for r in range(ROUNDS):
            barrier.wait(timeout=60)
            s = Store(f"{root}/round{r}/reference.sqlite")
            s.put_logps({f"{i}-{j}": (float(r), j) for j in range(5)})
            s.put_generations({f"{i}": [f"round {r}"]})
            s.put_eval(f"{i}", {"acc": [float(i)]})
            got = s.get_logps([f"{i}-{j}" for j in range(5)])
            if got != {f"{i}-{j}": (float(r), j) for j in range(5)} or s.get_generations([f"{i}"]) != {f"{i}": [f"round {r}"]}:
                errors.put(f"process {i}, round {r}: read back {got}")
            s.close()
    except Exception as e:  # noqa: BLE001 (reported, and the test fails on it)
        errors.put(f"process {i}: {type(e).__name__}: {e}")


def _children(target, args_of, n: int) -> list[str]:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    errors, barrier = ctx.Queue(), ctx.Barrier(n)
    procs = [ctx.Process(target=target, args=(*args_of(i), barrier, errors)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    found = []
    while not errors.empty():
        found.append(errors.get())
    return found + [f"process {i} exited with {p.exitcode}" for i, p in enumerate(procs) if p.exitcode != 0]


def test_eight_processes_open_a_new_store_at_once_and_each_reads_back_its_keys(tmp_path):
    assert _children(_own_keys, lambda i: (str(tmp_path), i), 8) == []
    for r in range(ROUNDS):  # and every key of every process is there afterwards
        s = Store(tmp_path / f"round{r}" / "reference.sqlite")
        assert len(s.get_logps([f"{i}-{j}" for i in range(8) for j in range(5)])) == 40
        assert len(s.get_generations([str(i) for i in range(8)])) == 8
        s.close()


def _overlap(path: str, i: int, barrier, errors) -> None:
    """Processes 0-3 rewrite the same 10 keys, 10 to a transaction, again and again; processes 4-7 read them and
    must see every batch whole: no keys yet, or all 10 from one write."""
    try:
        barrier.wait(timeout=60)
        s = Store(path)
        keys = [f"shared-{j}" for j in range(10)]
        for v in range(40):
            if i < 4:
                s.put_logps({k: (float(v), i) for k in keys})
                s.put_generations({k: [f"{i}:{v}"] * 3 for k in keys})
            else:
                got, gens = s.get_logps(keys), s.get_generations(keys)
                if len(got) not in (0, 10) or len(set(got.values())) > 1:
                    errors.put(f"reader {i} saw part of a write: {sorted(set(got.values()))} ({len(got)} keys)")
                if len(gens) not in (0, 10) or len({tuple(g) for g in gens.values()}) > 1:
                    errors.put(f"reader {i} saw part of a generations write ({len(gens)} keys)")
        s.close()
    except Exception as e:  # noqa: BLE001
        errors.put(f"process {i}: {type(e).__name__}: {e}")


def test_readers_beside_writers_of_the_same_keys_see_whole_writes_only(tmp_path):
    path = str(tmp_path / "reference.sqlite")
    assert _children(_overlap, lambda i: (path, i), 8) == []
    s = Store(path)
    assert len(set(s.get_logps([f"shared-{j}" for j in range(10)]).values())) == 1  # the last write, whole
