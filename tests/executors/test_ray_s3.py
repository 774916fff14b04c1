"""--executor ray with -o s3://bucket/prefix: moto's S3 server and a local 2-CPU Ray cluster,
both on 127.0.0.1. Each task uploads its own shard; the bytes are those of the local
executor's S3 output and of a local folder; a failed run keeps its shards and record in the
prefix and --resume keeps them without downloading them; credentials reach the tasks
through the environment and are written nowhere."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sources"))

from remote_fixtures import moto_s3  # noqa: E402

from quantkit.executors.resume import PLAN_FILE  # noqa: E402
from quantkit.executors.shard_task import CRASH_SHARD_ENV  # noqa: E402
from quantkit.sources.remote import RemoteStore  # noqa: E402

from test_ray import MAX_SIZE, _files, model  # noqa: E402,F401 (the same small Llama-shaped folder)

pytestmark = [pytest.mark.ray, pytest.mark.slow]
BUCKET = "out"
SECRET = "s3cr3t-Ray-Never-Printed"
KEY_ID = "AKIDRAYNEVERPRINTED"


@pytest.fixture(scope="module")
def s3():
    """moto on 127.0.0.1 with a versioned bucket (each PUT of a key is a new version), the
    credentials in the environment, then a local Ray cluster started with that environment
    (its workers inherit it); yields an s3fs filesystem."""
    credentials = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "QUANTKIT_REMOTE_RETRIES": "1"}
    with pytest.MonkeyPatch.context() as env, moto_s3(env, credentials, BUCKET) as fs:
        fs.call_s3("put_bucket_versioning", Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING, log_to_driver=False)
        try:
            yield fs
        finally:
            ray.shutdown()


def _objects(fs, prefix: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {k[len(prefix) + 1:]: fs.cat_file(k) for k in fs.find(prefix + "/")}


def _versions(fs, path: str) -> int:
    key = path.split("/", 1)[1]
    listed = fs.call_s3("list_object_versions", Bucket=BUCKET, Prefix=key)
    return len([v for v in listed.get("Versions", []) if v["Key"] == key])


def _args(model: Path, out: str, *more: str) -> list:
    return ["convert", model, "--to", "int8", "-o", out, "--max-size", MAX_SIZE, "--device", "cpu", *more]


def test_ray_to_s3_is_byte_identical_to_the_local_executor_and_a_local_folder(cli, s3, model, tmp_path):
    fs = s3
    ray_run = cli(*_args(model, f"s3://{BUCKET}/ray", "--executor", "ray", "--json"))
    assert ray_run.exit_code == 0, ray_run.stderr
    summary = json.loads(ray_run.stdout)
    assert cli(*_args(model, f"s3://{BUCKET}/local", "-q")).exit_code == 0
    assert cli(*_args(model, tmp_path / "folder", "-q")).exit_code == 0
    ray_objects, folder = _objects(fs, f"{BUCKET}/ray"), _files(tmp_path / "folder")
    shards = sorted(n for n in folder if n.endswith(".safetensors"))
    assert len(shards) >= 3 and summary["shards_converted"] == shards and summary["output"] == f"s3://{BUCKET}/ray"
    assert ray_objects == _objects(fs, f"{BUCKET}/local") == folder  # quantkit.json included: same source path
    assert PLAN_FILE not in ray_objects
    verified = cli("verify", f"s3://{BUCKET}/ray")
    assert verified.exit_code == 0 and "checksums verified" in verified.stdout


def test_a_task_killed_then_resume_keeps_the_uploaded_shards_reading_only_their_headers(cli, s3, model, tmp_path, monkeypatch):
    fs = s3
    url, prefix = f"s3://{BUCKET}/resumed", f"{BUCKET}/resumed"
    assert cli(*_args(model, tmp_path / "folder", "-q")).exit_code == 0
    shards = sorted(n for n in _files(tmp_path / "folder") if n.endswith(".safetensors"))
    victim = shards[1]
    monkeypatch.setenv(CRASH_SHARD_ENV, victim)
    failed = cli(*_args(model, url, "--executor", "ray"))
    assert failed.exit_code == 7
    assert f"1 shard task(s) failed, first {victim}:" in failed.stderr
    assert f"finished shard(s) are kept at {url} (with its {PLAN_FILE}): rerun the same command with --resume" in failed.stderr
    left = _objects(fs, prefix)
    assert sorted(left) == sorted([s for s in shards if s != victim] + [PLAN_FILE])  # no index, no manifest, no half shard
    record = json.loads(left[PLAN_FILE])
    assert sorted(record["done"]) == sorted(s for s in shards if s != victim)
    assert all(d["etag"] and d["self_checksum"] and d["sha256"] for d in record["done"].values())
    assert SECRET not in left[PLAN_FILE].decode() and KEY_ID not in left[PLAN_FILE].decode()
    monkeypatch.delenv(CRASH_SHARD_ENV)

    refused = cli(*_args(model, url, "--executor", "ray"))
    assert refused.exit_code == 5 and "holds an unfinished --executor ray run" in refused.stderr and "--resume" in refused.stderr
    reads: list[tuple[str, int, int]] = []
    real_read = RemoteStore.read

    def counted(self, file, start, end):
        reads.append((file.path.rsplit("/", 1)[-1], start, end))
        return real_read(self, file, start, end)

    monkeypatch.setattr(RemoteStore, "read", counted)
    resumed = cli(*_args(model, url, "--executor", "ray", "--resume", "--json"))
    assert resumed.exit_code == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["shards_converted"] == [victim] and summary["shards_kept"] == sorted(record["done"])
    for name in record["done"]:  # kept: never written again, and read up to the end of its header only
        assert _versions(fs, f"{prefix}/{name}") == 1
        header_end = 8 + int.from_bytes(left[name][:8], "little")
        assert reads and max(end for n, _, end in reads if n == name) <= header_end
    assert _objects(fs, prefix) == _files(tmp_path / "folder")
    assert cli("verify", url).exit_code == 0


def test_resume_with_a_replaced_shard_converts_it_again(cli, s3, model, tmp_path, monkeypatch):
    """An object written again since the record (another ETag) is not kept, even with the same size."""
    fs = s3
    url, prefix = f"s3://{BUCKET}/replaced", f"{BUCKET}/replaced"
    assert cli(*_args(model, tmp_path / "folder", "-q")).exit_code == 0
    shards = sorted(n for n in _files(tmp_path / "folder") if n.endswith(".safetensors"))
    monkeypatch.setenv(CRASH_SHARD_ENV, shards[0])
    assert cli(*_args(model, url, "--executor", "ray")).exit_code == 7
    monkeypatch.delenv(CRASH_SHARD_ENV)
    damaged = bytearray(fs.cat_file(f"{prefix}/{shards[1]}"))
    damaged[-1] ^= 1  # a tensor byte: the header (and its self-checksum) unchanged
    fs.pipe_file(f"{prefix}/{shards[1]}", bytes(damaged))
    other = cli("convert", model, "--to", "int8", "-o", url, "--max-size", "1MB", "--device", "cpu", "--executor", "ray", "--resume")
    assert other.exit_code == 2
    assert other.stderr.strip() == (f"quantkit: error: {url}: the partial output there was made by a different command (other source, "
                                    "options or quantkit version); rerun with --force instead of --resume to start over")
    resumed = cli(*_args(model, url, "--executor", "ray", "--resume", "--json"))
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["shards_converted"] == sorted([shards[0], shards[1]])
    assert _objects(fs, prefix) == _files(tmp_path / "folder")


def test_credentials_reach_the_tasks_through_the_environment_only(cli, s3, model):
    """The tasks authenticate (their uploads succeed) with nothing passed in a runtime_env;
    neither the output, the summary nor any file of the Ray session holds the secret."""
    result = cli(*_args(model, f"s3://{BUCKET}/creds", "--executor", "ray", "--json"))
    assert result.exit_code == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr and KEY_ID not in result.stdout + result.stderr
    assert ray.get_runtime_context().runtime_env == {}
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    assert session.is_dir()
    for path in session.rglob("*"):
        if path.is_file() and not path.is_symlink() and not path.name.endswith(".sock"):
            data = path.read_bytes()
            assert SECRET.encode() not in data and KEY_ID.encode() not in data, path


def test_an_s3_output_overlapping_nothing_but_unreachable_is_one_line(cli, s3, model):
    result = cli(*_args(model, "s3://no-such-bucket/x", "--executor", "ray"))
    assert result.exit_code == 5 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("quantkit: error: s3://no-such-bucket/x:") and SECRET not in result.stderr
    assert not os.path.exists("s3:")


def test_an_interrupted_driver_keeps_the_uploaded_shards_and_resume_finishes(s3, model, tmp_path):
    from quantkit.convert import ConvertOptions, convert
    from quantkit.executors.ray import InterruptedWithPartial, RayExecutor

    fs, url = s3, f"s3://{BUCKET}/interrupted"
    options = ConvertOptions("int8", max_shard_bytes=150_000, device="cpu")

    def interrupt_after_the_first_shard(num_bytes: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(InterruptedWithPartial, match=f"1 finished shard.* kept at {url} .*--resume"):
        convert(model, url, options=options, progress=interrupt_after_the_first_shard, executor=RayExecutor(model))
    left = _objects(fs, f"{BUCKET}/interrupted")
    assert PLAN_FILE in left and "quantkit.json" not in left and "model.safetensors.index.json" not in left
    executor = RayExecutor(model, resume=True)
    result = convert(model, url, options=options, executor=executor)
    assert len(executor.kept) == 1 and str(result.write.folder) == url
    convert(model, tmp_path / "local", options=options)
    assert _objects(fs, f"{BUCKET}/interrupted") == _files(tmp_path / "local")
