"""-o s3://bucket/prefix: convert and reshard written to moto's S3 server on 127.0.0.1, and
verify / compare of what they wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sources"))
from remote_fixtures import moto_s3, write_model  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from quantkit.writing import remote_output  # noqa: E402

BUCKET = "out"
SECRET = "s3cr3t-Never-Printed"
KEY_ID = "AKIDNEVERPRINTED"
INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto on a free port of 127.0.0.1 holding ``s3://out/model`` (a sharded Hugging Face
    folder, with one 6 MB tensor so that a 5 MiB part size takes a multipart upload); yields
    (the local copy, an s3fs filesystem, the environment)."""
    credentials = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "QUANTKIT_REMOTE_RETRIES": "1"}
    with pytest.MonkeyPatch.context() as env, moto_s3(env, credentials, BUCKET) as fs:
        local = tmp_path_factory.mktemp("s3out") / "model"
        write_model(local)
        big = {"model.big.weight": torch.randn(1536, 1024, generator=torch.Generator().manual_seed(3))}  # 6 MiB
        save_file(big, str(local / "model-00003-of-00003.safetensors"), metadata={"format": "pt"})
        index = json.loads((local / INDEX).read_text())
        index["weight_map"]["model.big.weight"] = "model-00003-of-00003.safetensors"
        (local / INDEX).write_text(json.dumps(index))
        for path in local.iterdir():
            fs.put_file(str(path), f"{BUCKET}/model/{path.name}")
        yield local, fs, {**os.environ}


@pytest.fixture(autouse=True)
def small_parts(monkeypatch):
    monkeypatch.setattr(remote_output, "PART_BYTES", 5 << 20)  # S3's minimum: the 6 MiB shard goes up in two parts


def _objects(fs, prefix: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {k[len(prefix) + 1:]: fs.cat_file(k) for k in fs.find(prefix + "/")}


def _same_as_local(fs, prefix: str, local: Path) -> None:
    """Every file byte-identical, quantkit.json apart from the source it names."""
    remote = _objects(fs, prefix)
    files = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert sorted(remote) == sorted(files)
    for name, data in files.items():
        if name == "quantkit.json":
            ours, theirs = json.loads(remote[name]), json.loads(data)
            assert {k: v for k, v in ours.items() if k != "source"} == {k: v for k, v in theirs.items() if k != "source"}
        else:
            assert remote[name] == data, name


@pytest.mark.parametrize("command", [("convert", "--to", "int8"), ("convert", "--to", "bf16", "--max-size", "3MB"), ("reshard", "--max-size", "3MB")])
def test_s3_to_s3_is_byte_identical_to_local_to_local(cli, s3, tmp_path, command):
    local, fs, _ = s3
    prefix = f"{BUCKET}/{command[0]}-{command[-1]}"
    result = cli(command[0], f"s3://{BUCKET}/model", *command[1:], "-o", f"s3://{prefix}", "-q")
    assert result.exit_code == 0, result.stderr
    assert cli(command[0], local, *command[1:], "-o", tmp_path / "local", "-q").exit_code == 0
    _same_as_local(fs, prefix, tmp_path / "local")
    verified = cli("verify", f"s3://{prefix}")
    assert verified.exit_code == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith(f"OK s3://{prefix}") and "checksums verified" in verified.stdout


def test_an_existing_output_is_refused_without_force_and_replaced_with_it(cli, s3):
    local, fs, _ = s3
    url = f"s3://{BUCKET}/replaced"
    assert cli("reshard", f"s3://{BUCKET}/model", "--max-size", "3MB", "-o", url, "-q").exit_code == 0
    before = _objects(fs, f"{BUCKET}/replaced")
    assert len([n for n in before if n.endswith(".safetensors")]) > 1
    refused = cli("convert", f"s3://{BUCKET}/model", "--to", "bf16", "-o", url, "-q")
    assert refused.exit_code == 5
    assert refused.stderr.strip() == f"quantkit: error: {url}: already holds a checkpoint; choose another output or pass --force to replace it"
    assert _objects(fs, f"{BUCKET}/replaced") == before  # nothing touched
    replaced = cli("convert", f"s3://{BUCKET}/model", "--to", "bf16", "--max-size", "100MB", "-o", url, "--force", "-q")
    assert replaced.exit_code == 0, replaced.stderr
    after = _objects(fs, f"{BUCKET}/replaced")
    assert sorted(after) == ["config.json", "model.safetensors", "quantkit.json", "tokenizer.json"]  # the old shards and index are gone
    assert cli("verify", url).exit_code == 0


def _killed_run(env: dict, url: str, kill_at: int) -> int:
    """Reshard to ``url`` in a child process killed outright (SIGKILL) as it starts its
    ``kill_at``-th upload: nothing of quantkit's own cleanup runs."""
    script = textwrap.dedent(f"""
        import os, signal, s3fs
        calls = []
        real = s3fs.S3FileSystem._put_file
        async def put_file(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)
            return await real(self, *args, **kwargs)
        s3fs.S3FileSystem._put_file = put_file
        from quantkit.reshard import reshard
        reshard("s3://{BUCKET}/model", {url!r}, max_shard_bytes=3 * 10**6, force=True)
    """)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120).returncode


def test_a_killed_run_leaves_no_index_verify_says_incomplete_and_force_replaces(cli, s3):
    local, fs, env = s3
    url = f"s3://{BUCKET}/killed"
    assert _killed_run(env, url, kill_at=3) == -9
    left = _objects(fs, f"{BUCKET}/killed")
    assert len(left) == 2 and all(n.endswith(".safetensors") for n in left)  # two shards up, no index, no manifest
    verified = cli("verify", url)
    assert verified.exit_code == 6
    assert f"{url}: incomplete: 2 shard(s) but no {INDEX} or quantkit.json" in verified.stdout
    assert "--force" in verified.stdout
    refused = cli("reshard", f"s3://{BUCKET}/model", "-o", url, "-q")
    assert refused.exit_code == 5 and "no quantkit.json (an incomplete output?)" in refused.stderr
    assert cli("reshard", f"s3://{BUCKET}/model", "--max-size", "3MB", "-o", url, "--force", "-q").exit_code == 0
    assert cli("verify", url).exit_code == 0


def test_a_run_killed_replacing_an_output_leaves_it_incomplete_not_mixed(cli, s3):
    """--force deletes the old index and manifest before the first upload: a prefix never
    holds an index over shards of another layout."""
    local, fs, env = s3
    url = f"s3://{BUCKET}/mixed"
    assert cli("convert", f"s3://{BUCKET}/model", "--to", "bf16", "--max-size", "3MB", "-o", url, "-q").exit_code == 0
    assert _killed_run(env, url, kill_at=2) == -9
    left = _objects(fs, f"{BUCKET}/mixed")
    assert INDEX not in left and "quantkit.json" not in left
    assert cli("verify", url).exit_code == 6


def test_a_failed_upload_exits_5_and_removes_what_it_uploaded(cli, s3, monkeypatch):
    import s3fs

    local, fs, _ = s3
    real = s3fs.S3FileSystem._put_file
    calls = []

    async def failing(self, lpath, rpath, *args, **kwargs):
        calls.append(rpath.rsplit("/", 1)[-1])
        if len(calls) == 3:
            raise OSError("simulated: connection lost")
        return await real(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", failing)
    result = cli("reshard", f"s3://{BUCKET}/model", "--max-size", "3MB", "-o", f"s3://{BUCKET}/failed", "-q")
    assert result.exit_code == 5
    assert result.stderr.strip() == f"quantkit: error: s3://{BUCKET}/failed: uploading {calls[-1]} failed: the request failed (OSError); check the bucket and the AWS credentials"
    assert _objects(fs, f"{BUCKET}/failed") == {}


def test_a_single_shard_output_without_its_manifest_is_incomplete(cli, s3):
    """One shard and no quantkit.json (uploaded last): quantkit's own record in the shard's
    header tells it from a plain single-file checkpoint."""
    _, fs, _ = s3
    url = f"s3://{BUCKET}/single"
    assert cli("convert", f"s3://{BUCKET}/model", "--to", "bf16", "-o", url, "-q").exit_code == 0
    shards = [k for k in fs.find(f"{BUCKET}/single/") if k.endswith(".safetensors")]
    assert len(shards) == 1
    fs.rm_file(f"{BUCKET}/single/quantkit.json")
    result = cli("verify", url)
    assert result.exit_code == 6 and f"{url}: incomplete: 1 shard(s) but no" in result.stdout


def test_verify_finds_a_damaged_object(cli, s3):
    local, fs, _ = s3
    url = f"s3://{BUCKET}/damaged"
    assert cli("reshard", f"s3://{BUCKET}/model", "--max-size", "3MB", "-o", url, "-q").exit_code == 0
    key = sorted(k for k in fs.find(f"{BUCKET}/damaged/") if k.endswith(".safetensors"))[0]
    data = bytearray(fs.cat_file(key))
    data[-1] ^= 1
    fs.pipe_file(key, bytes(data))
    result = cli("verify", url)
    assert result.exit_code == 6
    assert f"FAILED {url}:" in result.stdout and f"s3://{key}: SHA-256" in result.stdout


@pytest.mark.parametrize(
    "output,code,message",
    [
        ("gs://bucket/prefix", 2, "gs://bucket/prefix: quantkit does not write to gs://"),
        ("s3://bucket", 2, "s3://bucket: name an S3 prefix as s3://bucket/prefix"),
        (f"s3://{BUCKET}/model", 2, f"s3://{BUCKET}/model: the output overlaps the input"),
        ("s3://no-such-bucket/out", 5, "s3://no-such-bucket/out: listing failed: not found"),
    ],
)
def test_bad_outputs_are_one_line_before_anything_is_read(cli, s3, tmp_path, monkeypatch, output, code, message):
    monkeypatch.chdir(tmp_path)
    result = cli("convert", f"s3://{BUCKET}/model", "--to", "bf16", "-o", output)
    assert result.exit_code == code
    assert result.stderr.startswith(f"quantkit: error: {message}") and result.stderr.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing written locally (no ./gs:/...)


def test_credentials_are_never_printed_nor_stored(cli, s3):
    local, fs, _ = s3
    outputs = [
        cli("convert", f"s3://{BUCKET}/model", "--to", "int8", "-o", f"s3://{BUCKET}/creds", "--json"),
        cli("convert", f"s3://{BUCKET}/model", "--to", "int8", "-o", "s3://no-such-bucket/x"),
        cli("verify", f"s3://{BUCKET}/creds", "--json"),
        cli("verify", "s3://no-such-bucket/x"),
        cli("--debug", "verify", "s3://no-such-bucket/x"),
    ]
    assert [r.exit_code for r in outputs] == [0, 5, 0, 3, 3]
    written = b"".join(_objects(fs, f"{BUCKET}/creds").values())
    for text in [r.stdout + r.stderr for r in outputs] + [written.decode("latin-1")]:
        assert SECRET not in text and KEY_ID not in text


def test_compare_reads_both_checkpoints_from_s3(cli, s3):
    url = f"s3://{BUCKET}/compared"
    assert cli("convert", f"s3://{BUCKET}/model", "--to", "int8", "-o", url, "-q").exit_code == 0
    result = cli("compare", f"s3://{BUCKET}/model", url, "--json", "-q")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["original"] == f"s3://{BUCKET}/model" and report["converted"] == url
    assert any("model outputs not compared" in n and "remote" in n for n in report["notes"])


def test_a_dry_run_names_the_prefix_and_writes_nothing(cli, s3):
    local, fs, _ = s3
    result = cli("convert", f"s3://{BUCKET}/model", "--to", "int8", "-o", f"s3://{BUCKET}/dry", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert f"-> s3://{BUCKET}/dry (nothing written)" in result.stdout.splitlines()[0]
    assert _objects(fs, f"{BUCKET}/dry") == {}


def test_a_shard_is_gone_from_the_local_disk_before_the_next_is_uploaded(cli, s3, monkeypatch):
    """Disk use stays at the shard uploading, the one being written and the bytes written
    ahead (``WriteOptions.ahead_bytes``): never the shards before them."""
    local, fs, _ = s3
    real = remote_output.Uploader.upload_shard
    seen = []

    def checking(self, shard):
        seen.append((shard.path.name, sorted(p.name for p in shard.path.parent.glob("*.safetensors"))))
        real(self, shard)
        assert not shard.path.exists()

    monkeypatch.setattr(remote_output.Uploader, "upload_shard", checking)
    result = cli("reshard", f"s3://{BUCKET}/model", "--max-size", "10KB", "-o", f"s3://{BUCKET}/disk", "-q")
    assert result.exit_code == 0, result.stderr
    assert [name for name, _ in seen] == sorted(name for name, _ in seen) and len(seen) >= 4
    for name, on_disk in seen:
        assert on_disk[0] == name  # every earlier shard is uploaded and deleted


def test_force_aborts_the_multipart_uploads_a_killed_run_left_under_the_prefix_only(cli, s3):
    local, fs, env = s3
    client = fs.call_s3

    def unfinished(prefix: str) -> list[str]:
        return sorted(u["Key"] for u in client("list_multipart_uploads", Bucket=BUCKET, Prefix=prefix).get("Uploads") or [])

    for key in ("torn/model-00001-of-00002.safetensors", "torn/model-00002-of-00002.safetensors", "tornado/keep.bin"):
        upload = client("create_multipart_upload", Bucket=BUCKET, Key=key)  # as a kill mid-upload leaves it
        client("upload_part", Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * (5 << 20))
    fs.put_file(str(local / INDEX), f"{BUCKET}/torn/{INDEX}")  # something there: without --force it is refused
    refused = cli("convert", f"s3://{BUCKET}/model", "--to", "bf16", "-o", f"s3://{BUCKET}/torn", "-q")
    assert refused.exit_code == 5
    assert len(unfinished("torn/")) == 2  # a refused run touches nothing
    done = cli("convert", f"s3://{BUCKET}/model", "--to", "bf16", "-o", f"s3://{BUCKET}/torn", "--force")
    assert done.exit_code == 0, done.stderr
    assert f"aborted 2 unfinished multipart upload(s) left at s3://{BUCKET}/torn" in done.stdout + done.stderr
    assert unfinished("torn/") == []
    assert unfinished("tornado/") == ["tornado/keep.bin"]  # another prefix's upload is not this output's
    assert cli("verify", f"s3://{BUCKET}/torn").exit_code == 0


class _ListingFs:
    """An S3 filesystem whose listing of unfinished uploads is what ``listing`` says."""

    def __init__(self, listing):
        self.listing, self.aborted = listing, []

    def call_s3(self, method, **kwargs):
        if method == "list_multipart_uploads":
            return self.listing
        self.aborted.append(kwargs["Key"])
        return {}


@pytest.mark.parametrize("listing,aborted,error", [
    ({"Uploads": [{"Key": "model/a", "UploadId": "1"}, {"Key": "other/b", "UploadId": "2"}, {"Key": "modelx/c", "UploadId": "3"}]}, ["model/a"], None),
    ({"Uploads": [{"UploadId": "1"}]}, [], "listing unfinished uploads failed"),
    ({"Uploads": None, "IsTruncated": False}, [], None),
], ids=["keys-past-the-prefix", "entry-without-key", "no-uploads"])
def test_a_hostile_listing_of_unfinished_uploads_aborts_only_under_the_prefix(monkeypatch, listing, aborted, error):
    uploader = remote_output.Uploader.__new__(remote_output.Uploader)
    uploader.url, uploader._key = "s3://out/model", "out/model"
    uploader._store = type("Store", (), {"fs": _ListingFs(listing)})()
    if error:
        with pytest.raises(remote_output.OutputError, match=error):
            uploader.abort_unfinished()
    else:
        assert uploader.abort_unfinished() == len(aborted)
    assert uploader._store.fs.aborted == aborted
