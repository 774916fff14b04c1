"""https:// sources against a local Range-honouring server that counts what it serves."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")

from remote_fixtures import Faults, RangeServer, header_bytes_of, write_model  # noqa: E402

from quantkit.errors import InputError  # noqa: E402
from quantkit.sources.remote import RemoteOptions  # noqa: E402
from quantkit.sources.remote_safetensors import open_remote  # noqa: E402

INDEX = "model.safetensors.index.json"
FAST = RemoteOptions(timeout_s=5, retries=2, backoff_s=0.01)


@pytest.fixture
def model(tmp_path) -> Path:
    folder = tmp_path / "model"
    write_model(folder)
    return folder


@pytest.fixture
def server(model, monkeypatch):
    monkeypatch.setenv("QUANTKIT_REMOTE_BACKOFF_S", "0.01")
    monkeypatch.setenv("QUANTKIT_REMOTE_RETRIES", "2")
    srv = RangeServer(model).start()
    yield srv
    srv.stop()


def _shards(model: Path) -> list[Path]:
    return sorted(model.glob("*.safetensors"))


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def _same_output(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir() if p.name != "quantkit.json")  # the manifest names its source
    assert names == sorted(p.name for p in b.iterdir() if p.name != "quantkit.json")
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_inspect_fetches_only_the_index_and_headers(cli, server, model):
    result = cli("inspect", f"{server.url}/{INDEX}")
    assert result.exit_code == 0, result.stderr
    expected = {f"/{p.name}": header_bytes_of(p) for p in _shards(model)}
    expected[f"/{INDEX}"] = (model / INDEX).stat().st_size
    assert dict(server.served) == expected
    assert f"fetched: {sum(expected.values()):,} bytes" in result.stdout
    assert "model-00001-of-00002.safetensors" in result.stdout


@pytest.mark.parametrize("scheme", ["bf16", "int8"])
def test_convert_fetches_each_byte_once_and_matches_a_local_run(cli, server, model, tmp_path, scheme):
    remote = cli("convert", f"{server.url}/{INDEX}", "--to", scheme, "-o", tmp_path / "remote", "-q")
    assert remote.exit_code == 0, remote.stderr
    for shard in _shards(model):
        assert server.served[f"/{shard.name}"] == shard.stat().st_size, shard.name  # header + every tensor byte, once
    assert server.served[f"/{INDEX}"] == (model / INDEX).stat().st_size
    fetched = sum(server.served.values())
    assert f"fetched: {fetched:,} bytes" in remote.stdout
    local = cli("convert", model / INDEX, "--to", scheme, "-o", tmp_path / "local", "-q")
    assert local.exit_code == 0, local.stderr
    _same_output(tmp_path / "remote", tmp_path / "local")


def test_single_file_url(server, model):
    with open_remote(f"{server.url}/model-00002-of-00002.safetensors", options=FAST) as source:
        assert source.info.format == "safetensors"
        assert source.get_tensor("model.norm.weight").tolist() == [1.0] * 32
        assert source.bytes_fetched == header_bytes_of(model / "model-00002-of-00002.safetensors") + 32 * 4


def test_one_transient_500_is_retried(cli, server, model, tmp_path):
    server.faults.errors_500 = 1
    result = cli("convert", f"{server.url}/{INDEX}", "--to", "bf16", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stderr
    assert server.faults.errors_500 == 0
    local = cli("convert", model / INDEX, "--to", "bf16", "-o", tmp_path / "local", "-q")
    assert local.exit_code == 0, local.stderr
    _same_output(tmp_path / "out", tmp_path / "local")


def test_a_reset_mid_tensor_is_retried_and_the_output_is_unchanged(cli, server, model, tmp_path):
    server.faults.cut_after_bytes, server.faults.cut_count, server.faults.min_cut_request_bytes = 100, 1, 1000
    result = cli("convert", f"{server.url}/{INDEX}", "--to", "int8", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stderr
    assert server.faults.cut_count == 0  # the fault fired
    local = cli("convert", model / INDEX, "--to", "int8", "-o", tmp_path / "local", "-q")
    assert local.exit_code == 0, local.stderr
    _same_output(tmp_path / "out", tmp_path / "local")


@pytest.mark.parametrize(
    "faults,fragment",
    [
        (Faults(errors_500=100), "HTTP 500; gave up after 3 attempts"),
        (Faults(cut_after_bytes=100, cut_count=100, min_cut_request_bytes=1000), "connection reset"),
    ],
)
def test_persistent_failures_exit_3_naming_the_url(cli, server, tmp_path, faults, fragment):
    server.faults = faults
    faults.errors_500 = faults.errors_500 and 100
    if faults.cut_count:  # the headers come through; the tensors do not
        result = cli("convert", f"{server.url}/{INDEX}", "--to", "bf16", "-o", tmp_path / "out", "-q")
    else:
        result = cli("inspect", f"{server.url}/{INDEX}")
    assert result.exit_code == 3
    line = _one_error_line(result.stderr)
    assert server.url in line and fragment in line
    assert not (tmp_path / "out").exists()


def test_missing_file_and_credentials_never_shown(cli, server):
    url = server.url.replace("http://", "http://someone:hunter2@") + "/nothing/model.safetensors?X-Amz-Signature=s3cr3t"
    result = cli("inspect", url)
    assert result.exit_code == 3
    line = _one_error_line(result.stderr)
    assert "not found" in line and f"{server.url}/nothing/model.safetensors" in line
    assert "hunter2" not in line and "s3cr3t" not in line and "someone" not in line


def test_a_server_ignoring_range_is_refused_before_downloading(tmp_path, monkeypatch):
    big = tmp_path / "big" / "model.safetensors"
    big.parent.mkdir()
    with open(big, "wb") as f:  # sparse: 256 MiB on paper
        f.truncate(256 << 20)
    srv = RangeServer(big.parent, faults=Faults(ignore_range=True)).start()
    try:
        started = time.monotonic()
        with pytest.raises(InputError, match="ignores HTTP Range") as caught:
            open_remote(f"{srv.url}/model.safetensors", options=FAST)
        assert f"{srv.url}/model.safetensors" in str(caught.value)
        assert time.monotonic() - started < 10
        time.sleep(0.5)  # let the server notice the closed connection
        assert srv.served["/model.safetensors"] < 32 << 20  # socket buffers at most, not the file
    finally:
        srv.stop()


def test_ignoring_range_is_one_line_exit_3_from_the_cli(cli, server):
    server.faults.ignore_range = True
    result = cli("inspect", f"{server.url}/{INDEX}")
    assert result.exit_code == 3
    assert "ignores HTTP Range" in _one_error_line(result.stderr)


def test_timeouts_are_bounded(server):
    server.faults.stall_s = 2.0
    started = time.monotonic()
    with pytest.raises(InputError, match="timed out; gave up after 2 attempts"):
        open_remote(f"{server.url}/{INDEX}", options=RemoteOptions(timeout_s=0.3, retries=1, backoff_s=0.01))
    assert time.monotonic() - started < 5


def test_pth_over_the_network_is_refused_clearly(cli, server):
    result = cli("inspect", f"{server.url}/model.pth")
    assert result.exit_code == 3
    line = _one_error_line(result.stderr)
    assert "not read over the network" in line and "download it first" in line


def test_an_index_pointing_outside_its_folder_is_refused(server, model):
    (model / "evil.index.json").write_text('{"weight_map": {"a": "../../etc/passwd"}}')
    with pytest.raises(InputError, match="must be a file name beside the index"):
        open_remote(f"{server.url}/evil.index.json", options=FAST)


def test_a_header_length_beyond_the_file_is_refused_before_fetching_it(server, model):
    (model / "lying.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(InputError, match="runs past the end of the file"):
        open_remote(f"{server.url}/lying.safetensors", options=FAST)
    assert server.served["/lying.safetensors"] == 8


def test_reshard_copies_the_remote_bytes_once(cli, server, model, tmp_path):
    result = cli("reshard", f"{server.url}/{INDEX}", "-o", tmp_path / "out", "--max-size", "1GB", "-q")
    assert result.exit_code == 0, result.stderr
    assert all(server.served[f"/{p.name}"] == p.stat().st_size for p in _shards(model))
    local = cli("reshard", model / INDEX, "-o", tmp_path / "local", "--max-size", "1GB", "-q")
    assert local.exit_code == 0, local.stderr
    _same_output(tmp_path / "out", tmp_path / "local")


@pytest.mark.parametrize("command", [("convert", "--to", "bf16"), ("reshard",)])
@pytest.mark.parametrize("output", ["gs://bucket/out", "hf://org/out", "https://host/out"])
def test_a_url_other_than_s3_as_output_is_refused_not_written_locally(cli, server, tmp_path, monkeypatch, command, output):
    monkeypatch.chdir(tmp_path)
    result = cli(command[0], f"{server.url}/{INDEX}", *command[1:], "-o", output)
    assert result.exit_code == 2
    scheme = output.split(":", 1)[0]
    assert _one_error_line(result.stderr).startswith(f"quantkit: error: {output}: quantkit does not write to {scheme}://")
    assert not (tmp_path / f"{scheme}:").exists()


def test_an_empty_file_is_not_a_checkpoint(server, model):
    (model / "empty.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="not a safetensors file"):
        open_remote(f"{server.url}/empty.safetensors", options=FAST)


@pytest.mark.parametrize(
    "url,shown",
    [
        ("https://user:pw@host:8443/a/b.safetensors?X-Amz-Signature=x#frag", "https://host:8443/a/b.safetensors"),
        ("http://[::1]:9000/m.safetensors", "http://[::1]:9000/m.safetensors"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
    ],
)
def test_urls_are_shown_without_credentials(url, shown):
    from quantkit.sources.remote import display_url

    assert display_url(url) == shown


def test_settings_from_the_environment_are_checked():
    from quantkit.errors import UsageError

    assert RemoteOptions.from_environment({"QUANTKIT_REMOTE_RETRIES": "1", "QUANTKIT_REMOTE_TIMEOUT_S": "2.5"}) == RemoteOptions(retries=1, timeout_s=2.5)
    for bad in ({"QUANTKIT_REMOTE_RETRIES": "many"}, {"QUANTKIT_REMOTE_TIMEOUT_S": "0"}, {"QUANTKIT_REMOTE_BACKOFF_S": "-1"}):
        with pytest.raises(UsageError):
            RemoteOptions.from_environment(bad)
