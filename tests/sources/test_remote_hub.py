"""hf:// sources through huggingface_hub's HfFileSystem, pointed (HF_ENDPOINT) at a local
server answering the few Hub routes it uses."""

from __future__ import annotations

import pytest

pytest.importorskip("huggingface_hub")
pytest.importorskip("fsspec")

from remote_fixtures import RangeServer, header_bytes_of, write_model  # noqa: E402

PREFIX = "/org/model/resolve/main/"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    write_model(folder)
    srv = RangeServer(folder).start()
    monkeypatch.setenv("HF_ENDPOINT", srv.url)
    monkeypatch.setenv("HF_TOKEN", "hf_dummy_token_for_tests")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield srv, folder
    srv.stop()


def test_inspect_fetches_config_index_and_headers_only(cli, hub):
    srv, folder = hub
    result = cli("inspect", "hf://org/model")
    assert result.exit_code == 0, result.stderr
    expected = {PREFIX + p.name: header_bytes_of(p) for p in folder.glob("*.safetensors")}
    for name in ("model.safetensors.index.json", "config.json"):
        expected[PREFIX + name] = (folder / name).stat().st_size
    assert dict(srv.served) == expected
    assert f"fetched: {sum(expected.values()):,} bytes" in result.stdout


def test_convert_fetches_each_byte_once_and_matches_a_local_run(cli, hub, tmp_path):
    srv, folder = hub
    remote = cli("convert", "hf://org/model@main", "--to", "bf16", "-o", tmp_path / "remote", "-q")
    assert remote.exit_code == 0, remote.stderr
    assert dict(srv.served) == {PREFIX + p.name: p.stat().st_size for p in folder.iterdir()}
    local = cli("convert", folder, "--to", "bf16", "-o", tmp_path / "local", "-q")
    assert local.exit_code == 0, local.stderr
    for path in (tmp_path / "local").iterdir():
        if path.name != "quantkit.json":
            assert (tmp_path / "remote" / path.name).read_bytes() == path.read_bytes(), path.name


def test_a_missing_repository_exits_3_without_the_token(cli, hub):
    result = cli("inspect", "hf://org/missing")
    assert result.exit_code == 3
    assert result.stderr.startswith("quantkit: error: hf://org/missing: not found")
    assert "hf_dummy" not in result.stderr


def test_a_transient_500_is_retried_by_huggingface_hub(cli, hub, monkeypatch):
    srv, _ = hub
    monkeypatch.setattr("time.sleep", lambda s: None)  # http_backoff's waits
    srv.faults.errors_500, srv.faults.errors_500_only = 1, "/resolve/"  # a file read: the Hub API calls are not retried
    result = cli("inspect", "hf://org/model")
    assert result.exit_code == 0, result.stderr
    assert srv.faults.errors_500 == 0


def test_a_transient_500_from_the_hub_api_is_retried_by_quantkit(cli, hub, monkeypatch):
    srv, _ = hub
    monkeypatch.setenv("QUANTKIT_REMOTE_BACKOFF_S", "0.01")
    srv.faults.errors_500, srv.faults.errors_500_only = 1, "/api/"
    result = cli("inspect", "hf://org/model")
    assert result.exit_code == 0, result.stderr
    assert srv.faults.errors_500 == 0


def test_a_hub_api_failing_for_good_exits_3(cli, hub, monkeypatch):
    srv, _ = hub
    monkeypatch.setenv("QUANTKIT_REMOTE_BACKOFF_S", "0.01")
    monkeypatch.setenv("QUANTKIT_REMOTE_RETRIES", "1")
    srv.faults.errors_500, srv.faults.errors_500_only = 100, "/api/"
    result = cli("inspect", "hf://org/model")
    assert result.exit_code == 3
    assert result.stderr.strip().startswith("quantkit: error: hf://org/model: the server answered HTTP 500; gave up after 2 attempts")
