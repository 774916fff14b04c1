"""Servers for the remote-source tests, all on 127.0.0.1, started and stopped by the tests.

``RangeServer`` serves a folder over HTTP, honouring single ``Range`` requests, counting the
bytes of body it sends per path, and injecting faults on request: answers of 500, a
connection cut mid-body, ``Range`` ignored. It also answers the few Hub API routes
``HfFileSystem`` uses (repository revision, tree listing, ``resolve``), so ``hf://`` is
tested against it through ``HF_ENDPOINT``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from safetensors.torch import save_file

HUB_SHA = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Faults:
    """What the server does wrong; each count is used up as it fires."""

    errors_500: int = 0  # answer this many requests with 500 first
    errors_500_only: str = ""  # ... of those whose path contains this
    cut_after_bytes: int | None = None  # on the next tensor-sized answer, send this many body bytes then close
    cut_count: int = 0  # how many answers to cut
    ignore_range: bool = False  # answer 200 with the whole file
    min_cut_request_bytes: int = 64  # only cut answers at least this long (tensor data, not headers)
    stall_s: float = 0.0  # wait this long before answering a file request


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client hanging up is part of these tests, not news


@dataclass
class RangeServer:
    root: Path
    faults: Faults = field(default_factory=Faults)
    served: Counter = field(default_factory=Counter)  # URL path -> body bytes sent
    requests: list = field(default_factory=list)  # (method, path, Range header)
    hub_repo: str = "org/model"

    def __post_init__(self):
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                server._handle(self, head=True)

            def do_GET(self):
                server._handle(self, head=False)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)  # stop() waits one poll

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> "RangeServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def _take(self, name: str) -> bool:
        with self._lock:
            left = getattr(self.faults, name)
            if left:
                setattr(self.faults, name, left - 1)
            return bool(left)

    def _handle(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = h.path.split("?", 1)[0]
        with self._lock:
            self.requests.append((h.command, h.path, h.headers.get("Range")))
        if self.faults.errors_500_only in path and self._take("errors_500"):
            return self._send(h, 500, b"boom", head=head)
        if path.startswith("/api/models/"):
            return self._hub_api(h, path, head=head)
        match = re.match(rf"^/{re.escape(self.hub_repo)}/resolve/[^/]+/(.+)$", path)
        file = self.root / (match.group(1) if match else path.lstrip("/"))
        if ".." in path or not file.is_file():
            return self._send(h, 404, b"not found", head=head)
        size = file.stat().st_size
        m = re.match(r"^bytes=(\d+)-(\d*)$", h.headers.get("Range") or "")
        if self.faults.stall_s:
            time.sleep(self.faults.stall_s)
        if m is None or self.faults.ignore_range:
            return self._send_file(h, 200, file, 0, size, head=head, path=path)
        start = int(m.group(1))
        end = min(int(m.group(2)) + 1 if m.group(2) else size, size)
        if start >= size:
            return self._send(h, 416, b"", head=head, extra={"Content-Range": f"bytes */{size}"})
        cut = None
        if self.faults.cut_after_bytes is not None and end - start >= self.faults.min_cut_request_bytes and self._take("cut_count"):
            cut = self.faults.cut_after_bytes
        self._send_file(h, 206, file, start, end, head=head, path=path, cut=cut, extra={"Content-Range": f"bytes {start}-{end - 1}/{size}"})

    def _hub_api(self, h, path: str, *, head: bool) -> None:
        prefix = f"/api/models/{self.hub_repo}"
        if not path.startswith(prefix):
            return self._send(h, 404, b'{"error": "Repository not found"}', head=head, extra={"X-Error-Code": "RepoNotFound"})
        rest = path[len(prefix):]
        if rest == "" or rest.startswith("/revision/"):
            body = {"id": self.hub_repo, "modelId": self.hub_repo, "sha": HUB_SHA, "private": False, "siblings": []}
        elif rest.startswith("/tree/"):
            sub = rest.split("/", 3)[3] if rest.count("/") >= 3 else ""
            folder = self.root / sub
            body = [
                {"type": "file" if p.is_file() else "directory", "path": str(p.relative_to(self.root)),
                 "size": p.stat().st_size if p.is_file() else 0, "oid": "0" * 40}
                for p in sorted(folder.iterdir())
            ]
        else:
            return self._send(h, 404, b"{}", head=head)
        self._send(h, 200, json.dumps(body).encode(), head=head, extra={"Content-Type": "application/json"})

    def _send(self, h, status: int, body: bytes, *, head: bool, extra=None) -> None:
        self._headers(h, status, len(body), extra)
        if not head:
            h.wfile.write(body)

    def _headers(self, h, status: int, length: int, extra=None, close: bool = False) -> None:
        h.send_response(status)
        h.send_header("Content-Length", str(length))
        h.send_header("Accept-Ranges", "bytes")
        for key, value in (extra or {}).items():
            h.send_header(key, value)
        if close:
            h.send_header("Connection", "close")
        h.end_headers()

    def _send_file(self, h, status: int, file: Path, start: int, end: int, *, head: bool, path: str, cut: int | None = None, extra=None) -> None:
        """Bytes ``start..end`` of ``file`` in 64 KiB writes, counting those the socket took
        (a client that hangs up early stops the count); ``cut``: stop after that many and
        drop the connection."""
        self._headers(h, status, end - start, extra, close=cut is not None or status == 200)
        if head:
            return
        stop = end if cut is None else start + cut
        with open(file, "rb") as f:
            f.seek(start)
            position = start
            while position < stop:
                chunk = f.read(min(1 << 16, stop - position))
                # counted before it is sent: a client that has its bytes finds them counted
                with self._lock:
                    self.served[path] += len(chunk)
                try:
                    h.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    h.close_connection = True
                    return
                position += len(chunk)
        if cut is not None:
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)


def write_model(folder: Path, *, seed: int = 0, sharded: bool = True) -> dict[str, torch.Tensor]:
    """A small seeded llama-shaped Hugging Face folder: two safetensors shards and their index
    (or one ``model.safetensors``), ``config.json`` and ``tokenizer.json``."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        "model.embed_tokens.weight": torch.randn(64, 32, generator=gen),
        "model.layers.0.mlp.up_proj.weight": torch.randn(96, 32, generator=gen),
        "model.layers.0.mlp.down_proj.weight": torch.randn(32, 96, generator=gen).to(torch.bfloat16),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(32, 32, generator=gen),
        "model.layers.0.input_layernorm.weight": torch.ones(32),
        "model.norm.weight": torch.ones(32),
        "lm_head.weight": torch.randn(64, 32, generator=gen).to(torch.float16),
        "model.step": torch.tensor([7], dtype=torch.int64),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}))
    (folder / "tokenizer.json").write_text('{"version": "1.0"}\n')
    if not sharded:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return tensors
    names = list(tensors)
    parts = [names[:4], names[4:]]
    weight_map = {}
    for i, part in enumerate(parts, 1):
        shard = f"model-{i:05d}-of-{len(parts):05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return tensors


def header_bytes_of(path: Path) -> int:
    """8 + the header length of a safetensors file: what reading only its header fetches."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


@contextmanager
def moto_s3(env, credentials: dict[str, str], bucket: str) -> Iterator[object]:
    """moto's S3 server on a free port of 127.0.0.1, ``credentials`` in the environment (set
    through ``env``, a ``pytest.MonkeyPatch``; no AWS profile, config or credentials file read)
    and ``bucket`` created in it; yields an s3fs filesystem on it."""
    from moto import server as moto_server

    values = {"AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", **credentials}
    for key, value in values.items():
        env.setenv(key, value)
    env.delenv("AWS_PROFILE", raising=False)
    if "AWS_SESSION_TOKEN" not in credentials:
        env.delenv("AWS_SESSION_TOKEN", raising=False)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        # moto keeps its buckets in the process, across servers: each module starts empty
        urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"), timeout=30).close()
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(bucket)
        yield fs
    finally:
        server.stop()
