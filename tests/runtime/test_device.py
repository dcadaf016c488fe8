"""Device and dtype: resolved once, honoured everywhere; a tiny model runs end to end in bfloat16 on the CPU."""

import json
import math
from pathlib import Path

import pytest
import torch

import bapo
from bapo.core.logprobs import additive_mask, pack_groups, packed_logps, score
from bapo.core.tokens import Encoded
from bapo.data.config import DataConfig
from bapo.errors import ConfigError, ModelError
from bapo.runtime.models import describe_dtype, dtype_name, load_model, resolve_device, resolve_dtype
from bapo.training.config import TrainConfig
from tests.helpers import make_pairs, write_jsonl


def test_auto_is_cuda_where_available_else_cpu_and_named_dtypes_are_honoured():
    dev = resolve_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA device"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                                        (False, False, torch.float32)])
def test_auto_dtype_on_a_cpu_is_bfloat16_only_where_it_has_bfloat16_units(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert describe_dtype("auto", torch.device("cpu")).startswith(f"{dtype_name(expected)} (auto: this CPU ")
    assert describe_dtype("float32", torch.device("cpu")) == "float32"  # asked for: no reason given


def test_auto_dtype_on_cuda_follows_the_devices_bfloat16_support(monkeypatch):
    for supported, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert resolve_dtype("auto", torch.device("cuda")) == expected


def test_this_machines_answer_matches_its_cpu_flags():
    """The probe torch reads agrees with what the kernel reports (Linux only)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo on this platform")
    flags = set(next(x for x in cpuinfo.read_text().splitlines() if x.startswith("flags")).split())
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert (resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16) == native


def test_bad_device_or_dtype_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="device: 'gpu'"):
        TrainConfig(out="x", data=DataConfig(path="p"), device="gpu").validate()
    with pytest.raises(ConfigError, match="dtype: 'fp8'"):
        TrainConfig(out="x", data=DataConfig(path="p"), dtype="fp8").validate()


def test_model_loads_in_the_dtype_asked_and_packed_scoring_builds_its_mask_in_it(tiny_model):
    model = load_model(tiny_model, "cpu", "bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert additive_mask(torch.tensor([[True, False]]), torch.bfloat16).dtype == torch.bfloat16
    seqs = [Encoded((7, 8, 9), (10, 11, 12)), Encoded((7, 8, 9), (20, 21)), Encoded((30, 31), (32, 33, 34))]
    packed = score(model, seqs, 0)  # shared prompts packed into one row under the 4D mask
    alone = score(model, seqs, 0, pack=False)
    assert [n for _, n in packed] == [3, 2, 3]
    assert [v for v, _ in packed] == pytest.approx([v for v, _ in alone], abs=0.05)
    batch = pack_groups([seqs[:2]], 0, [[0, 1]])
    assert batch["attention_mask"].dtype == torch.bool  # turned into the model's dtype only inside the forward
    sums, _ = packed_logps(model, batch)
    assert torch.isfinite(sums).all()
    fp32 = score(load_model(tiny_model, "cpu", "float32"), seqs, 0)
    assert [v for v, _ in packed] == pytest.approx([v for v, _ in fp32], abs=0.1)  # bf16 keeps ~3 digits


def _losses(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_training_end_to_end_in_bfloat16_is_finite_and_close_to_float32(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8, 2))
    losses = {}
    for dtype in ("float32", "bfloat16"):
        cfg = TrainConfig(model=tiny_model, out=str(tmp_path / dtype), data=DataConfig(path=str(data)), max_steps=4,
                          batch_size=4, lr=1e-2, device="cpu", dtype=dtype, save_steps=100)
        cfg.base.max_new_tokens = 8
        bapo.train(cfg)
        losses[dtype] = _losses(Path(cfg.out))
    assert len(losses["bfloat16"]) == 4 and all(math.isfinite(v) for v in losses["bfloat16"])
    # Stated tolerance: 0.01 nats per logged loss over 4 steps of this random tiny model (measured 2026-11-24:
    # float32 [0.6931, 0.6931, 1.4438, 0.6054], bfloat16 [0.6931, 0.6931, 1.4455, 0.6054], at most 0.0017 apart).
    assert losses["bfloat16"] == pytest.approx(losses["float32"], abs=0.01)
    assert losses["float32"][0] != pytest.approx(losses["float32"][-1], abs=1e-4)  # it trained
    run = json.loads((tmp_path / "bfloat16" / "run.json").read_text())
    assert run["model_fingerprint"] == json.loads((tmp_path / "float32" / "run.json").read_text())["model_fingerprint"]
