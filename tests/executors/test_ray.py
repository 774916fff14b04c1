"""--executor ray on a local 2-CPU Ray cluster started here (127.0.0.1): every output file
byte-identical to a local run's, and --resume after a worker killed mid-shard and after an
interrupted driver converts only the shards not finished."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ray = pytest.importorskip("ray")

from quantkit.convert import ConvertOptions, convert  # noqa: E402
from quantkit.executors.ray import InterruptedWithPartial, RayExecutor, _started_a_cluster  # noqa: E402
from quantkit.executors.resume import PLAN_FILE  # noqa: E402
from quantkit.executors.shard_task import CRASH_SHARD_ENV  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one local cluster at a time under -n 2
MAX_SIZE = "150KB"  # several shards of the model below, whatever the scheme


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A small Llama-shaped folder (float32, config.json, a tokenizer file)."""
    folder = tmp_path_factory.mktemp("src") / "llama"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    hidden = 128
    sd = {"model.embed_tokens.weight": torch.randn(64, hidden, generator=g), "model.norm.weight": torch.ones(hidden),
          "lm_head.weight": torch.randn(64, hidden, generator=g)}
    for i in range(3):
        p = f"model.layers.{i}"
        for proj in ("q", "k", "v", "o"):
            sd[f"{p}.self_attn.{proj}_proj.weight"] = torch.randn(hidden, hidden, generator=g) * 0.02
        sd[f"{p}.mlp.up_proj.weight"] = torch.randn(2 * hidden, hidden, generator=g) * 0.02
        sd[f"{p}.mlp.down_proj.weight"] = torch.randn(hidden, 2 * hidden, generator=g) * 0.02
        sd[f"{p}.input_layernorm.weight"] = torch.ones(hidden)
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "float32"}))
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _local(cli, model: Path, tmp_path: Path, scheme: str) -> dict[str, bytes]:
    """The files of the same command run with the local executor."""
    out = tmp_path / f"local-{scheme}"
    assert cli("convert", model, "--to", scheme, "-o", out, "--max-size", MAX_SIZE, "--device", "cpu").exit_code == 0
    return _files(out)


@pytest.mark.parametrize("scheme", ["bf16", "int8", "fp8"])
def test_every_file_is_byte_identical_to_a_local_run(cluster, cli, model, tmp_path, scheme):
    out = tmp_path / "ray"
    result = cli("convert", model, "--to", scheme, "-o", out, "--max-size", MAX_SIZE, "--device", "cpu", "--executor", "ray", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    ray_files, local_files = _files(out), _local(cli, model, tmp_path, scheme)
    shards = [n for n in local_files if n.endswith(".safetensors")]
    assert len(shards) >= 3 and {"config.json", "tokenizer.json", "quantkit.json", "model.safetensors.index.json"} <= set(local_files)
    assert list(ray_files) == list(local_files)
    assert ray_files == local_files
    assert summary["shards_kept"] == [] and summary["shards_converted"] == shards
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"local-{scheme}", "ray"]  # no partial folder left
    assert cli("verify", out).exit_code == 0


def test_a_worker_killed_mid_shard_then_resume_converts_only_that_shard(cluster, cli, model, tmp_path, monkeypatch):
    out = tmp_path / "ray"
    args = ["convert", model, "--to", "int8", "-o", out, "--max-size", MAX_SIZE, "--device", "cpu", "--executor", "ray"]
    shards = sorted(n for n in _local(cli, model, tmp_path, "int8") if n.endswith(".safetensors"))
    victim = shards[1]
    monkeypatch.setenv(CRASH_SHARD_ENV, victim)
    failed = cli(*args)
    assert failed.exit_code == 7
    assert f"1 shard task(s) failed, first {victim}:" in failed.stderr and "rerun the same command with --resume" in failed.stderr
    partial = tmp_path / ".ray.quantkit-partial"
    assert not out.exists() and partial.is_dir()
    record = json.loads((partial / PLAN_FILE).read_text())
    assert sorted(record["done"]) == [s for s in shards if s != victim]
    assert (partial / victim).exists() and victim not in record["done"]  # the half-written shard the worker left
    written = {n: (partial / n).stat().st_mtime_ns for n in record["done"]}

    monkeypatch.delenv(CRASH_SHARD_ENV)
    resumed = cli(*args, "--resume", "--json")
    assert resumed.exit_code == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["shards_converted"] == [victim] and summary["shards_kept"] == sorted(written)
    assert {n: (out / n).stat().st_mtime_ns for n in written} == written  # kept, not rewritten
    assert _files(out) == _files(tmp_path / "local-int8")
    assert not partial.exists()


def test_an_interrupted_driver_then_resume_finishes_with_the_same_bytes(cluster, model, tmp_path):
    out = tmp_path / "ray"
    options = ConvertOptions("fp8", max_shard_bytes=150_000, device="cpu")

    def interrupt_after_the_first_shard(num_bytes: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(InterruptedWithPartial, match="1 finished shard.* kept in .*--resume"):
        convert(model, out, options=options, progress=interrupt_after_the_first_shard, executor=RayExecutor(model))
    partial = tmp_path / ".ray.quantkit-partial"
    done = sorted(json.loads((partial / PLAN_FILE).read_text())["done"])
    assert not out.exists() and len(done) == 1

    executor = RayExecutor(model, resume=True)
    result = convert(model, out, options=options, executor=executor)
    assert executor.kept == done and sorted(executor.converted + executor.kept) == sorted(s.path.name for s in result.write.shards)
    convert(model, tmp_path / "local", options=options)
    assert _files(out) == _files(tmp_path / "local")
    assert not partial.exists()


def test_resume_of_another_command_is_refused_and_a_run_without_resume_starts_over(cluster, cli, model, tmp_path, monkeypatch):
    out = tmp_path / "ray"
    args = ["convert", model, "--to", "bf16", "-o", out, "--max-size", MAX_SIZE, "--executor", "ray"]
    monkeypatch.setenv(CRASH_SHARD_ENV, "model-00001-of-00007.safetensors")  # bf16: 7 shards of 150KB
    assert cli(*args).exit_code == 7
    monkeypatch.delenv(CRASH_SHARD_ENV)
    refused = cli(*args[:-4], "--max-size", "1MB", "--executor", "ray", "--resume")
    assert refused.exit_code == 2 and "made by a different command" in refused.stderr
    assert (tmp_path / ".ray.quantkit-partial").is_dir()  # still there for the right command
    fresh = cli(*args, "--json")
    assert fresh.exit_code == 0, fresh.stderr
    summary = json.loads(fresh.stdout)
    assert summary["shards_kept"] == [] and len(summary["shards_converted"]) == 7
    assert any("quantkit-partial" in note for note in summary["notes"])


def test_counts_of_kept_shards_are_reported_after_resume(cluster, cli, tmp_path, monkeypatch):
    """Values an FP16 cast made inf, in shards a resumed run kept, still reach the summary."""
    src = tmp_path / "big.safetensors"
    tensors = {f"layer.{i}.weight": torch.full((64, 64), 1e6 if i % 2 else 1.0) for i in range(4)}  # 16 KB each
    save_file(tensors, str(src))
    args = ["convert", src, "--to", "fp16", "--max-size", "8KB", "--json", "-q"]
    local = json.loads(cli(*args, "-o", tmp_path / "local").stdout)
    assert len(local["files"]) == 4 and sorted(local["fp16_overflow"]) == ["layer.1.weight", "layer.3.weight"]
    monkeypatch.setenv(CRASH_SHARD_ENV, "model-00003-of-00004.safetensors")
    assert cli(*args, "-o", tmp_path / "ray", "--executor", "ray").exit_code == 7
    monkeypatch.delenv(CRASH_SHARD_ENV)
    resumed = json.loads(cli(*args, "-o", tmp_path / "ray", "--executor", "ray", "--resume").stdout)
    assert resumed["shards_converted"] == ["model-00003-of-00004.safetensors"]
    assert resumed["fp16_overflow"] == local["fp16_overflow"] and resumed["nonfinite_created"] == local["nonfinite_created"]
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


def test_a_remote_source_is_read_by_the_tasks(cluster, cli, tmp_path):
    pytest.importorskip("fsspec")
    pytest.importorskip("aiohttp")
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "sources"))
    from remote_fixtures import RangeServer, write_model

    model = tmp_path / "model"
    write_model(model)
    server = RangeServer(model).start()
    try:
        url = f"{server.url}/model.safetensors.index.json"
        ray_run = cli("convert", url, "--to", "int8", "-o", tmp_path / "ray", "--max-size", "20KB", "--executor", "ray", "-q")
        assert ray_run.exit_code == 0, ray_run.stderr
        fetched = sum(server.served.values())
        assert f"fetched: {fetched:,} bytes" in ray_run.stdout  # the driver's headers and every task's reads
        for shard in model.glob("*.safetensors"):  # each tensor byte once, beside the headers each task reads
            assert server.served[f"/{shard.name}"] >= shard.stat().st_size
        local = cli("convert", url, "--to", "int8", "-o", tmp_path / "local", "--max-size", "20KB", "-q")
        assert local.exit_code == 0, local.stderr
    finally:
        server.stop()
    ray_files = _files(tmp_path / "ray")
    assert len([n for n in ray_files if n.endswith(".safetensors")]) >= 2
    assert ray_files == _files(tmp_path / "local")


class _RecordingRay:
    """Stands in for the ray module in RayExecutor._stop: records the calls made."""

    def __init__(self):
        self.calls: list[tuple] = []

    def cancel(self, ref, force=False):
        self.calls.append(("cancel", ref, force))

    def wait(self, refs, num_returns=1, timeout=None):
        self.calls.append(("wait", tuple(refs), num_returns))
        return refs, []

    def shutdown(self):
        self.calls.append(("shutdown",))


@pytest.mark.parametrize("own", [True, False], ids=["cluster-started-here", "cluster-connected-to"])
def test_an_interrupt_shuts_down_a_cluster_started_here_and_cancels_tasks_on_one_connected_to(model, own):
    executor = RayExecutor(model)
    executor.ray, executor._own_cluster = _RecordingRay(), own
    executor._stop({"ref-a": "a.safetensors", "ref-b": "b.safetensors"})
    if own:  # ray.cancel of a task whose result is arriving aborts Ray 2.60's driver
        assert executor.ray.calls == [("shutdown",)] and not executor._own_cluster
    else:
        assert executor.ray.calls == [("cancel", "ref-a", True), ("cancel", "ref-b", True), ("wait", ("ref-a", "ref-b"), 2)]


def test_a_cluster_started_by_ray_init_is_told_from_one_connected_to(cluster):
    assert _started_a_cluster(ray)  # the fixture's ray.init started this one
    executor = RayExecutor(".")
    with executor._connected():  # already connected: this run did not start it, and must not shut it down
        assert not executor._own_cluster
    assert ray.is_initialized()
