"""s3:// sources against moto's S3 server on 127.0.0.1, with dummy credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from remote_fixtures import header_bytes_of, moto_s3, write_model  # noqa: E402

from quantkit.convert import ConvertOptions, convert  # noqa: E402
from quantkit.sources import open_checkpoint  # noqa: E402

BUCKET = "models"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto on a free port of 127.0.0.1 holding ``s3://models/model`` (a sharded Hugging Face
    folder) and ``s3://models/torch/model.pth``; yields the local copy of ``model``."""
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}
    with pytest.MonkeyPatch.context() as env, moto_s3(env, credentials, BUCKET) as fs:
        local = tmp_path_factory.mktemp("s3") / "model"
        write_model(local)
        for path in local.iterdir():
            fs.put_file(str(path), f"{BUCKET}/model/{path.name}")
        fs.pipe_file(f"{BUCKET}/torch/model.pth", b"PK\x03\x04 not really")
        yield local


def _file_bytes(folder: Path, *names: str) -> int:
    return sum((folder / n).stat().st_size for n in names)


def test_open_reads_the_index_headers_and_config_only(s3):
    with open_checkpoint(f"s3://{BUCKET}/model") as source:
        assert source.info.format == "safetensors-sharded"
        assert str(source.path) == f"s3://{BUCKET}/model/model.safetensors.index.json"  # as a local folder's source names its index
        headers = sum(header_bytes_of(p) for p in s3.glob("*.safetensors"))
        assert source.bytes_fetched == headers + _file_bytes(s3, "model.safetensors.index.json", "config.json")
        assert (source.info.config_dir / "config.json").read_bytes() == (s3 / "config.json").read_bytes()


def test_inspect_says_what_it_fetched(cli, s3):
    result = cli("inspect", f"s3://{BUCKET}/model", "--json")
    assert result.exit_code == 0, result.stderr
    assert '"bytes_fetched": ' in result.stdout and '"model-00001-of-00002.safetensors"' in result.stdout


def test_convert_fetches_each_byte_once_and_matches_a_local_run(s3, tmp_path):
    with open_checkpoint(f"s3://{BUCKET}/model") as source:
        convert(source, tmp_path / "remote", options=ConvertOptions("int8"))
        everything = sum(p.stat().st_size for p in s3.iterdir())  # shards, index, config.json, tokenizer.json
        assert source.bytes_fetched == everything
    convert(s3, tmp_path / "local", options=ConvertOptions("int8"))
    names = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "remote").iterdir())
    assert "tokenizer.json" in names
    for name in names:
        if name != "quantkit.json":  # names its source
            assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


@pytest.mark.parametrize("url", ["s3://no-such-bucket/model", f"s3://{BUCKET}/no-such-model.safetensors"])
def test_missing_bucket_or_key_exits_3_naming_the_url(cli, s3, url):
    result = cli("inspect", url)
    assert result.exit_code == 3
    assert result.stderr.strip() == f"quantkit: error: {url}: not found (no such bucket, key, repository, revision or file); " \
        "check the bucket and key, and the AWS credentials (environment or AWS profile)"
    assert "testing" not in result.stderr


def test_a_pth_folder_is_refused_clearly(cli, s3):
    result = cli("inspect", f"s3://{BUCKET}/torch")
    assert result.exit_code == 3
    assert "not read over the network" in result.stderr and "quantkit reshard" in result.stderr
