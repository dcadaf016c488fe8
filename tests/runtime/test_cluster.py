"""``--executor ray``: users' adapters as Ray tasks. Each case runs in a child process inside a network namespace with
loopback alone (``unshare -n``): Ray listens on the machine's external address by default, and these machines send
nothing beyond loopback. The local Ray instance it starts is a one-node cluster; the tasks run in Ray's own worker
processes, so what a task reads and writes goes through the same paths as on many nodes (the driver's cache through
its actor, the output folder on a shared filesystem)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bapo.data.config import DataConfig
from bapo.errors import ConfigError
from bapo.runtime.config import ClusterSettings
from bapo.training.config import TrainConfig
from tests.helpers import make_pairs, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def _in_namespace(case: str, tmp_path: Path, tiny_model: str) -> str:
    """Run ``case`` (a function below) in a child process inside ``unshare -n`` with loopback up; its output."""
    pytest.importorskip("ray")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("unshare or ip missing: Ray is run only inside a network namespace with loopback alone")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"cannot make a network namespace here (unshare -n: {probe.stderr.decode().strip()})")
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path; "
            f"from tests.runtime import test_cluster as t; t.{case}(Path({str(tmp_path)!r}), {tiny_model!r})")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "RAY_USAGE_STATS_ENABLED": "0",
           "TQDM_DISABLE": "1"}
    done = subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, "-c",
                           code], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, f"{case} failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    return done.stdout


def _config(tiny_model: str, data: Path, out: Path, cache: Path, executor: str) -> TrainConfig:
    cfg = TrainConfig(model=tiny_model, out=str(out), cache_dir=str(cache), data=DataConfig(path=str(data), holdout=0.25),
                      max_steps=3, batch_size=2, lr=5e-3, save_steps=1, per_user=True, device="cpu", dtype="float32",
                      cluster=ClusterSettings(executor=executor, task_cpus=1))
    cfg.base.max_new_tokens = 6
    return cfg


def _users(tmp_path: Path) -> Path:
    rows = (make_pairs(8, 1, user="ann") + [{**r, "prompt": r["prompt"] + " (b)", "chosen": r["chosen"] + "!"}
                                            for r in make_pairs(6, 1, user="bo")]
            + [{**r, "prompt": r["prompt"] + " (c)", "rejected": r["rejected"] + "?"} for r in make_pairs(6, 1, user="cy")])
    return write_jsonl(tmp_path / "users.jsonl", rows)


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _listening() -> set[str]:
    """The local address of every listening TCP socket in this network namespace (``/proc/net/tcp`` and ``tcp6``
    list the namespace's own): inside ``unshare -n`` only this test's processes have any."""
    found = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for line in table.read_text().splitlines()[1:] if table.exists() else []:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # TCP_LISTEN
                raw = bytes.fromhex(local.split(":")[0])
                # the kernel prints the address as 32-bit words in host (little-endian) order
                addr = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
                found.add(str(getattr(addr, "ipv4_mapped", None) or addr))  # ::ffff:127.0.0.1 is 127.0.0.1
    return found


def case_per_user_on_ray_equals_local(tmp_path: Path, tiny_model: str) -> None:
    import torch
    from safetensors.torch import load_file

    from bapo.training.per_user import train_per_user

    torch.set_num_threads(1)  # the tasks' thread count (task_cpus 1): a backward pass's sums split by threads
    data = _users(tmp_path)
    local = train_per_user(_config(tiny_model, data, tmp_path / "local", tmp_path / "c-local", "local"))
    on_ray = train_per_user(_config(tiny_model, data, tmp_path / "ray", tmp_path / "c-ray", "ray"))
    import ray

    assert ray.is_initialized()  # Ray's processes still up: none of them listens beyond loopback
    listening = _listening()
    assert listening and all(ipaddress.ip_address(a).is_loopback for a in listening), listening
    assert [(u.user, u.pairs, u.holdout_pairs, u.steps) for u in on_ray.users] == \
        [(u.user, u.pairs, u.holdout_pairs, u.steps) for u in local.users] and len(local.users) == 3
    for u in ("ann", "bo", "cy"):
        a, b = (load_file(str(tmp_path / side / u / "adapter_model.safetensors")) for side in ("local", "ray"))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a), u
        ma, mb = _metrics(tmp_path / "local" / u), _metrics(tmp_path / "ray" / u)
        losses = [(x["loss"], y["loss"]) for x, y in zip(ma, mb) if "loss" in x]
        assert losses and all(abs(x - y) <= 1e-6 for x, y in losses), (u, losses)
        assert (tmp_path / "local" / u / "holdout.jsonl").read_text() == (tmp_path / "ray" / u / "holdout.jsonl").read_text()
    print("users", [u.user for u in on_ray.users])


def test_per_user_on_ray_equals_local(tmp_path, tiny_model):
    """Three users trained as Ray tasks give the local run's adapters (to 1e-6), losses and held-out splits."""
    assert "users ['ann', 'bo', 'cy']" in _in_namespace("case_per_user_on_ray_equals_local", tmp_path, tiny_model)


def case_a_user_that_fails_fails_alone(tmp_path: Path, tiny_model: str) -> None:
    from bapo.training.per_user import TrainingFailed, train_per_user

    data = _users(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "bo").write_text("a file where bo's adapter folder goes\n")  # bo's task cannot write its outputs
    try:
        train_per_user(_config(tiny_model, data, out, tmp_path / "c", "ray"))
    except TrainingFailed as e:
        assert list(e.failed) == ["bo"] and len(str(e).splitlines()) == 2, str(e)
        print("said:", str(e).splitlines()[-1])
    else:
        raise AssertionError("bo's failure was not reported")
    users = (out / "users.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in users[1:]] == ["ann", "cy"], users
    assert (out / "ann" / "run.json").exists() and (out / "cy" / "run.json").exists()


def test_a_user_whose_task_fails_fails_alone_and_the_rest_finish(tmp_path, tiny_model):
    """bo's task cannot write its folder: the error names bo in one line, and ann's and cy's adapters are made."""
    said = _in_namespace("case_a_user_that_fails_fails_alone", tmp_path, tiny_model)
    assert "said: user bo: " in said, said


def _dies_once(marker: str) -> str:
    """A task whose first try's worker dies (as when its node goes), and whose retry finishes."""
    if not os.path.exists(marker):
        Path(marker).write_text("died once\n")
        os._exit(1)
    return "finished on its retry"


def _bad_input(path: str) -> str:
    raise ValueError(f"{path}: line 3: not JSON")


def case_tasks_retry_a_dead_worker_and_a_failing_one_fails_alone(tmp_path: Path, tiny_model: str) -> None:
    from bapo.runtime import cluster

    settings = ClusterSettings(executor="ray", task_cpus=1, task_retries=2)
    cluster.connect(settings)
    out = cluster.run_tasks(lambda kind, arg: _dies_once(arg) if kind == "die" else _bad_input(arg),
                            [("dies", ("die", str(tmp_path / "marker"))), ("bad", ("bad", "users.jsonl")),
                             ("fine", ("die", str(tmp_path / "marker")))], settings, "jobs", show=False)
    assert out.results.get("dies") == "finished on its retry" and out.results.get("fine") == "finished on its retry"
    assert out.failed == {"bad": "ValueError: users.jsonl: line 3: not JSON"}, out.failed


def test_a_task_whose_worker_dies_is_retried_and_one_that_raises_fails_alone(tmp_path, tiny_model):
    _in_namespace("case_tasks_retry_a_dead_worker_and_a_failing_one_fails_alone", tmp_path, tiny_model)


def test_relative_paths_are_refused_under_ray_in_one_line(tmp_path, tiny_model):
    """Every node reads and writes the output folder, the data and the cache: a relative path would be a different
    folder on each (its worker's working directory). Refused before anything runs, Ray or no Ray installed."""
    data = _users(tmp_path)
    cfg = _config(tiny_model, data, Path("adapters"), tmp_path / "c", "ray")
    with pytest.raises(ConfigError, match=r"^out: 'adapters' is relative; with --executor ray give an absolute path"):
        cfg.validate()
    cfg.per_user = False
    cfg.out = str(tmp_path / "o")
    with pytest.raises(ConfigError, match="ray spreads --per-user's users"):
        cfg.validate()
    with pytest.raises(ConfigError, match="executor: 'slurm' is not one of local, ray"):
        ClusterSettings(executor="slurm").validate()


def case_a_study_on_ray_equals_local(tmp_path: Path, tiny_model: str) -> None:
    import torch

    from bapo.studies.config import StudyConfig, study_training
    from bapo.data.users import Sources
    from bapo.studies.run import run_study
    from tests.studies.test_run import mini_data

    torch.set_num_threads(1)  # the tasks' thread count (task_cpus 1)
    data = mini_data(tmp_path / "data")

    def study(name: str, executor: str) -> dict:
        train = study_training()
        train.model, train.epochs, train.batch_size, train.lr = tiny_model, 1, 4, 5e-3
        train.base.max_new_tokens, train.data.max_length, train.data.max_prompt_length = 6, 128, 64
        train.cache_dir, train.device, train.dtype = str(tmp_path / f"cache-{name}"), "cpu", "float32"
        cfg = StudyConfig(users=["flip:0", "flip:1"], methods=["dpo", "bapo"], seeds=1, out=str(tmp_path / name),
                          pairs_per_user=8, holdout_pairs=4, eval_items=0, alignment_items=0, drift_prompts=3,
                          sources=Sources(data_dir=str(data)), train=train,
                          cluster=ClusterSettings(executor=executor, task_cpus=1))
        run_study(cfg)
        return json.loads((tmp_path / name / "study.json").read_text())

    local, on_ray = study("local", "local"), study("ray", "ray")
    # The reference's log-probs: the same numbers, each computed in the batch a local run computes it in (cells
    # training side by side once raced to cache the ones they share, each from its own batches).
    ref_logps = {side: dict(sqlite3.connect(tmp_path / f"cache-{side}" / "reference.sqlite").execute(
        "SELECT key, logp FROM logps")) for side in ("local", "ray")}
    assert ref_logps["local"] == ref_logps["ray"]
    assert len(local["rows"]) == len(on_ray["rows"]) == 4
    for a, b in zip(local["rows"], on_ray["rows"]):
        for k, v in a.items():
            if isinstance(v, float) and "seconds" not in k:
                assert abs(v - b[k]) <= 1e-6, (a["user"], a["method"], k, v, b[k])
            elif k not in ("adapter",) and "seconds" not in k:
                assert v == b[k], (k, v, b[k])
    print("rows", len(on_ray["rows"]))


def test_a_study_on_ray_equals_local(tmp_path, tiny_model):
    """A miniature study (2 users x DPO, BAPO): its cells trained and its models scored as Ray tasks give the local
    run's table, every number to 1e-6."""
    assert "rows 4" in _in_namespace("case_a_study_on_ray_equals_local", tmp_path, tiny_model)


def case_budget_probes_on_ray_equal_local(tmp_path: Path, tiny_model: str) -> None:
    import torch

    from bapo.budget.run import train_each_user
    from bapo.runtime.config import BudgetSettings

    torch.set_num_threads(1)
    data = _users(tmp_path)
    tables = {}
    for side in ("local", "ray"):
        cfg = _config(tiny_model, data, tmp_path / side, tmp_path / f"c-{side}", side)
        cfg.budget = BudgetSettings(spec="drift:0.05", drift_items=3, scales=[1.0, 0.5, 0.0])
        done = train_each_user(cfg)
        tables[side] = {u.user: (u.budget_scale, json.loads((tmp_path / side / u.user / "run.json").read_text())
                                 ["forgetting_budget"]["probe"]) for u in done.users}
    assert tables["local"].keys() == tables["ray"].keys() == {"ann", "bo", "cy"}
    for u, (scale, rows) in tables["local"].items():
        other_scale, other = tables["ray"][u]
        assert scale == other_scale and [r["within"] for r in rows] == [r["within"] for r in other], u
        assert all(abs(r["losses"]["drift"] - o["losses"]["drift"]) <= 1e-6 for r, o in zip(rows, other)), u
    print("scales", sorted((u, s) for u, (s, _) in tables["ray"].items()))


def test_budget_probes_on_ray_equal_local(tmp_path, tiny_model):
    """--per-user --forgetting-budget on Ray: each user's adapter probed by its own task (after the base model's
    probe), the same tables and scales as a local run."""
    assert "scales [('ann'" in _in_namespace("case_budget_probes_on_ray_equal_local", tmp_path, tiny_model)


def case_a_node_that_dies_mid_training(tmp_path: Path, tiny_model: str) -> None:
    import threading
    import time

    import torch
    from ray.cluster_utils import Cluster
    from safetensors.torch import load_file

    from bapo.training.per_user import train_per_user

    torch.set_num_threads(1)
    data = _users(tmp_path)
    local = _config(tiny_model, data, tmp_path / "local", tmp_path / "c-local", "local")
    local.max_steps = 12
    train_per_user(local)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the driver's node: the cache, no tasks
    doomed = cluster.add_node(num_cpus=1)
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    cfg = _config(tiny_model, data, tmp_path / "ray", tmp_path / "c-ray", "ray")
    cfg.max_steps, cfg.cluster.ray_address = 12, cluster.address
    killed = []

    def kill_when_training() -> None:  # every worker node busy with a user once a first checkpoint is written
        import ray

        while not (any((tmp_path / "ray" / u / "checkpoints").exists() for u in ("ann", "bo", "cy"))
                   and ray.is_initialized() and ray.available_resources().get("CPU", 0) == 0):
            time.sleep(0.02)  # a user training and no CPU free: the doomed node runs a user's task
        cluster.remove_node(doomed, allow_graceful=False)
        killed.append(time.time())

    threading.Thread(target=kill_when_training, daemon=True).start()
    done = train_per_user(cfg)
    assert killed and [u.user for u in done.users] == ["ann", "bo", "cy"]
    for u in ("ann", "bo", "cy"):
        a, b = (load_file(str(tmp_path / side / u / "adapter_model.safetensors")) for side in ("local", "ray"))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a), u
    print("survived", len(done.users))


def test_a_task_whose_node_dies_is_retried_elsewhere_and_resumes(tmp_path, tiny_model):
    """Three users on a simulated cluster of three one-CPU nodes (ray.cluster_utils.Cluster); one node is killed
    while each trains a user. Its user's task is retried on a node that finished its own, resumes from its
    checkpoints, and every adapter equals the local run's."""
    assert "survived 3" in _in_namespace("case_a_node_that_dies_mid_training", tmp_path, tiny_model)
