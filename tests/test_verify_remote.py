"""verify of a URL: a quantkit output served over HTTP (a Range server on 127.0.0.1) and on the
Hub stand-in; the S3 cases (incomplete prefixes) are in tests/writing/test_remote_output.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("fsspec")
sys.path.insert(0, str(Path(__file__).resolve().parent / "sources"))
from remote_fixtures import RangeServer, write_model  # noqa: E402

from quantkit.reshard import reshard  # noqa: E402
from quantkit.verify_remote import verify_remote  # noqa: E402

INDEX = "model.safetensors.index.json"


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTKIT_REMOTE_RETRIES", "0")
    write_model(tmp_path / "model")
    reshard(tmp_path / "model", tmp_path / "out", max_shard_bytes=10_000)
    server = RangeServer(tmp_path / "out").start()
    yield tmp_path / "out", server
    server.stop()


def test_a_served_output_verifies_reading_the_data_once(served):
    folder, server = served
    report = verify_remote(f"{server.url}/{INDEX}")
    assert report.ok and report.checksums == "verified", report.problems
    assert report.format == "safetensors-sharded" and len(report.files) > 2
    for shard in report.files:  # the data once (hashed), the header (a few hundred bytes) also to locate, parse and mask
        header = 8 + int.from_bytes((folder / shard).read_bytes()[:8], "little")
        size = (folder / shard).stat().st_size
        assert size + header <= server.served[f"/{shard}"] <= size + 2 * header + 8


def test_a_damaged_shard_is_named(served, cli):
    folder, server = served
    shard = sorted(folder.glob("*.safetensors"))[1]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    result = cli("verify", f"{server.url}/{INDEX}")
    assert result.exit_code == 6
    assert f"{server.url}/{shard.name}: SHA-256" in result.stdout and "quantkit.json" in result.stdout


def test_a_missing_index_url_is_exit_3(served, cli):
    _, server = served
    result = cli("verify", f"{server.url}/nothing.safetensors.index.json")
    assert result.exit_code == 3 and "not found" in result.stderr
