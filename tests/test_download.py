"""`dp-sam2 download` against a local HTTP server on 127.0.0.1 serving a generated checkpoint:
a whole download, a broken connection resumed automatically and by a second run (HTTP Range),
the atomic rename, verification, and clear errors."""
from __future__ import annotations

import http.server
import threading

import pytest
import torch

from dp_sam2.checkpoints import download as dl
from dp_sam2.checkpoints.registry import MODELS


class _Server:
    """Serves ``files`` (name -> bytes); honours Range; can cut the first N responses short."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.ranges: list[str | None] = []
        self.cut_next = 0  # how many of the next responses break half way
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                owner.ranges.append(self.headers.get("Range"))
                if name not in owner.files:
                    self.send_error(404)
                    return
                data = owner.files[name]
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if owner.cut_next > 0:
                    owner.cut_next -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # a broken connection mid-file
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ckpts"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory) -> bytes:
    """A generated sam2_tiny checkpoint (our random model, fp16 to keep it small)."""
    from dp_sam2 import build_sam2

    torch.manual_seed(0)
    model = build_sam2("sam2_tiny", device="cpu", apply_postprocessing=False)
    path = tmp_path_factory.mktemp("gen") / "sam2_hiera_tiny.pt"
    torch.save({"model": {k: v.half() for k, v in model.state_dict().items()}}, path)
    return path.read_bytes()


@pytest.fixture
def server(tiny_bytes):
    srv = _Server({"sam2_hiera_tiny.pt": tiny_bytes, "sam2_hiera_small.pt": b"not a checkpoint" * 100})
    yield srv
    srv.close()


def test_download_with_broken_connection_resumes_automatically(server, tmp_path, tiny_bytes):
    server.cut_next = 1
    (res,) = dl.download(["sam2_tiny"], dest=tmp_path, base_url=server.url, progress=False)
    assert res.path == tmp_path / "sam2_hiera_tiny.pt" and res.path.read_bytes() == tiny_bytes
    assert not (tmp_path / "sam2_hiera_tiny.pt.part").exists()
    assert server.ranges[0] is None and server.ranges[1] == f"bytes={len(tiny_bytes) // 2}-"
    # already there: verified, not fetched again
    (again,) = dl.download(["sam2_hiera_tiny.pt"], dest=tmp_path, base_url=server.url, progress=False)
    assert again.status == "present" and len(server.ranges) == 2


def test_interrupted_run_leaves_part_and_next_run_resumes(server, tmp_path, tiny_bytes):
    server.cut_next = 1
    with pytest.raises(dl.DownloadError, match="run the same command again to resume"):
        dl.download(["sam2_tiny"], dest=tmp_path, base_url=server.url, retries=0, progress=False)
    part = tmp_path / "sam2_hiera_tiny.pt.part"
    assert part.stat().st_size == len(tiny_bytes) // 2
    assert not (tmp_path / "sam2_hiera_tiny.pt").exists()  # never a truncated final file
    (res,) = dl.download(["sam2_tiny"], dest=tmp_path, base_url=server.url, progress=False)
    assert res.status == "resumed" and res.path.read_bytes() == tiny_bytes
    assert server.ranges[-1] == f"bytes={len(tiny_bytes) // 2}-"


def test_cli_download_and_bad_file(server, tmp_path, capsys):
    from dp_sam2.tools.cli import main

    assert main(["download", "sam2_tiny", "--dest", str(tmp_path), "--base-url", server.url, "--no-progress"]) == 0
    assert "sam2_hiera_tiny.pt" in capsys.readouterr().out
    # a file that does not load is refused and never gets the final name
    assert main(["download", "sam2_small", "--dest", str(tmp_path), "--base-url", server.url, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "does not hold sam2_small" in err and not (tmp_path / "sam2_hiera_small.pt").exists()
    assert (tmp_path / "sam2_hiera_small.pt.bad").exists()


def test_wrong_model_behind_a_name_is_refused(tiny_bytes, tmp_path):
    srv = _Server({"sam2.1_hiera_large.pt": tiny_bytes})  # a 2.0 tiny file under a 2.1 large name
    try:
        with pytest.raises(ValueError, match="SAM 2.0 checkpoint"):
            dl.download(["sam2.1_large"], dest=tmp_path, base_url=srv.url, progress=False)
    finally:
        srv.close()


def test_offline_errors_are_clear(tmp_path):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there
    with pytest.raises(dl.DownloadError) as info:
        dl.download(["sam2_large"], dest=tmp_path, base_url=f"http://127.0.0.1:{port}", retries=0, progress=False)
    msg = str(info.value)
    assert "cannot connect" in msg and MODELS["sam2_large"].url in msg and str(tmp_path) in msg


def test_names_and_default_destination(tmp_path, monkeypatch):
    assert [s.name for s in dl.resolve_names(["sam2_large", "sam2.1_hiera_tiny.pt", "sam2_large"])] == \
        ["sam2_large", "sam2.1_tiny"]
    assert {s.name for s in dl.resolve_names(list(MODELS))} == set(MODELS)
    with pytest.raises(ValueError, match="known names"):
        dl.resolve_names(["sam3_huge"])
    monkeypatch.setenv("DP_SAM2_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert dl.default_dest() == tmp_path / "cache"
    repo = tmp_path / "dp_repo"
    (repo / "diffusion_policy" / "workspace").mkdir(parents=True)
    (repo / "data").mkdir()
    monkeypatch.chdir(repo / "data")
    assert dl.default_dest() == repo.resolve() / "checkpoints"


def test_no_network_says_offline(tmp_path, monkeypatch):
    import socket
    import urllib.error
    import urllib.request

    def no_dns(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", no_dns)
    with pytest.raises(dl.DownloadError, match="cannot resolve the host \\(offline") as info:
        dl.download(["sam2.1_large"], dest=tmp_path, progress=False)
    assert "copy it to" in str(info.value) and not list(tmp_path.iterdir())
