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
