"""Shared fixtures: small seeded checkpoints of every input kind, built in tmp_path."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import settings as _hypothesis_settings
from safetensors.torch import save_file

# Shared machines stall now and then: a property test's example running past hypothesis'
# default 200 ms deadline is noise there, not a failure.
_hypothesis_settings.register_profile("quantkit", deadline=None)
_hypothesis_settings.load_profile("quantkit")

def pytest_ignore_collect(collection_path, config):
    """Under ``-m "not slow"`` (``make test``), a test module whose ``pytestmark`` marks it slow
    as a whole is not imported: none of its tests would run, and its imports (llm-compressor,
    Ray) take seconds."""
    if config.option.markexpr.strip() != "not slow" or not (collection_path.name.startswith("test_") and collection_path.suffix == ".py"):
        return None
    marks = [line for line in collection_path.read_text().splitlines() if line.startswith("pytestmark")]
    return True if any("pytest.mark.slow" in line for line in marks) else None


ALL_DTYPES = [
    torch.float32, torch.float16, torch.bfloat16, torch.float64,
    torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool,
    torch.float8_e4m3fn, torch.float8_e5m2,
]
# torch's legacy (pre-1.6) format cannot hold float8: torch.save writes a file torch.load
# then fails on (AttributeError in persistent_load), so legacy fixtures leave them out.
LEGACY_DTYPES = [d for d in ALL_DTYPES if d not in (torch.float8_e4m3fn, torch.float8_e5m2)]

KINDS = ["safetensors", "safetensors-sharded", "pth-zip", "pth-legacy", "bin-sharded", "hf-folder", "hf-folder-bin", "pth-wrapped"]
HF_FILES = {"config.json": '{"model_type": "tiny", "hidden_size": 4}\n', "tokenizer.json": '{"version": "1.0"}\n'}


def random_tensor(gen: torch.Generator, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -(2**31)), min(info.max, 2**31 - 1), shape, generator=gen, dtype=torch.int64).to(dtype)


def make_state_dict(seed: int = 0, dtypes: list[torch.dtype] = ALL_DTYPES) -> dict[str, torch.Tensor]:
    """Every dtype, a 0-d and an empty tensor, a transposed (non-contiguous) tensor, a row view
    of another tensor's storage, and tied weights (two names, one tensor)."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    embed = torch.randn(10, 4, generator=gen)
    sd["model.embed_tokens.weight"] = embed
    for i, dtype in enumerate(dtypes):
        sd[f"model.layers.{i}.{str(dtype).removeprefix('torch.')}"] = random_tensor(gen, dtype, (3, 5))
    base = torch.randn(6, 4, generator=gen)
    sd["model.base"] = base
    sd["model.row_view"] = base[2]  # shares base's storage at an offset: saved as its own tensor
    sd["model.transposed"] = torch.randn(4, 6, generator=gen).t()  # non-contiguous
    sd["model.scalar"] = torch.tensor(3.25)
    sd["model.empty"] = torch.empty(0, 4)
    sd["lm_head.weight"] = embed  # tied to the embedding
    return sd


def assert_bit_equal(actual: torch.Tensor, expected: torch.Tensor, name: str = "") -> None:
    assert actual.dtype == expected.dtype, name
    assert actual.shape == expected.shape, name
    raw = lambda t: t.detach().reshape(-1).contiguous().view(torch.uint8)  # noqa: E731
    assert torch.equal(raw(actual), raw(expected)), name
    if not expected.dtype.is_floating_point or expected.dtype.itemsize > 1:  # torch.equal has no float8 kernel
        assert torch.equal(actual, expected), name


def assert_same_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert_bit_equal(actual[name], tensor, name)


@dataclass
class Checkpoint:
    path: Path  # what the user passes to quantkit
    expected: dict[str, torch.Tensor]  # what load_state_dict must give back
    tied: dict[str, str]  # dropped name -> kept name, where the input stores a tensor once


def _unshared(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors files cannot share storage: every tensor its own contiguous copy."""
    return {k: v.contiguous().clone() for k, v in sd.items()}


def _split(names: list[str], parts: int) -> list[list[str]]:
    return [names[i::parts] for i in range(parts)]


def _write_index(folder: Path, index_name: str, weight_map: dict[str, str], total: int) -> Path:
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / index_name).write_text(json.dumps(index, indent=2))
    return folder / index_name


def _sharded_safetensors(folder: Path, sd: dict[str, torch.Tensor]) -> Path:
    weight_map = {}
    groups = _split(sorted(sd), 3)
    for i, names in enumerate(groups, 1):
        file_name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: sd[n] for n in names}, str(folder / file_name), metadata={"format": "pt"})
        weight_map.update({n: file_name for n in names})
    return _write_index(folder, "model.safetensors.index.json", weight_map, sum(t.nbytes for t in sd.values()))


def _sharded_bin(folder: Path, sd: dict[str, torch.Tensor]) -> Path:
    # the tied pair stays in one shard, as torch.save of one state dict keeps it
    tied = {"model.embed_tokens.weight", "lm_head.weight"}
    groups = _split(sorted(set(sd) - tied), 3)
    groups[0] += sorted(tied)
    weight_map = {}
    for i, names in enumerate(groups, 1):
        file_name = f"pytorch_model-{i:05d}-of-{len(groups):05d}.bin"
        torch.save({n: sd[n] for n in names}, folder / file_name)
        weight_map.update({n: file_name for n in names})
    return _write_index(folder, "pytorch_model.bin.index.json", weight_map, 0)


def build_checkpoint(kind: str, folder: Path, seed: int = 0) -> Checkpoint:
    """Write a checkpoint of ``kind`` (one of KINDS) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    torch_tied = {"lm_head.weight": "model.embed_tokens.weight"}
    if kind == "safetensors":
        sd = _unshared(make_state_dict(seed))
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return Checkpoint(folder / "model.safetensors", sd, {})
    if kind == "safetensors-sharded":
        sd = _unshared(make_state_dict(seed))
        return Checkpoint(_sharded_safetensors(folder, sd), sd, {})
    if kind == "pth-zip":
        sd = make_state_dict(seed)
        torch.save(sd, folder / "model.pth")
        return Checkpoint(folder / "model.pth", sd, torch_tied)
    if kind == "pth-legacy":
        sd = make_state_dict(seed, LEGACY_DTYPES)
        torch.save(sd, folder / "model.pth", _use_new_zipfile_serialization=False)
        return Checkpoint(folder / "model.pth", sd, torch_tied)
    if kind == "bin-sharded":
        sd = make_state_dict(seed)
        return Checkpoint(_sharded_bin(folder, sd), sd, torch_tied)
    if kind in ("hf-folder", "hf-folder-bin"):
        for name, text in HF_FILES.items():
            (folder / name).write_text(text)
        sd = make_state_dict(seed)
        if kind == "hf-folder":
            sd = _unshared(sd)
            save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
            return Checkpoint(folder, sd, {})
        torch.save(sd, folder / "pytorch_model.bin")
        return Checkpoint(folder, sd, torch_tied)
    if kind == "pth-wrapped":
        sd = make_state_dict(seed)
        param = torch.nn.Parameter(torch.zeros(3))
        optimizer = torch.optim.Adam([param], lr=1e-3)
        param.grad = torch.ones(3)
        optimizer.step()
        torch.save({"model_state_dict": sd, "optimizer_state_dict": optimizer.state_dict(), "epoch": 7}, folder / "train.pth")
        return Checkpoint(folder / "train.pth", sd, torch_tied)
    raise ValueError(kind)


@pytest.fixture(params=KINDS)
def checkpoint(request, tmp_path) -> Checkpoint:
    """One checkpoint of each input kind (the test runs once per kind)."""
    return build_checkpoint(request.param, tmp_path / "src")


@pytest.fixture
def make_checkpoint(tmp_path) -> Callable[..., Checkpoint]:
    counter = iter(range(1000))
    return lambda kind, seed=0: build_checkpoint(kind, tmp_path / f"src{next(counter)}", seed)


@pytest.fixture
def small_pth(tmp_path) -> Path:
    """A plain zip-format .pth of mixed tensors."""
    path = tmp_path / "model.pth"
    torch.save(make_state_dict(1), path)
    return path


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """Run the quantkit CLI in-process: ``cli("reshard", str(path), "-o", str(out))``."""
    from typer.testing import CliRunner

    from quantkit_cli.main import app

    def invoke(*args: str) -> CliResult:
        result = CliRunner().invoke(app, [str(a) for a in args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a crash the CLI did not turn into a message: show it
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return invoke
