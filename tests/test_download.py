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


def _tiny_checkpoint_bytes(folder) -> bytes:
    """A generated sam2_tiny checkpoint (our random model, fp16 to keep it small)."""
    from dp_sam2 import build_sam2

    torch.manual_seed(0)
    model = build_sam2("sam2_tiny", device="cpu", apply_postprocessing=False)
    path = folder / "generated_sam2_hiera_tiny.pt"
    torch.save({"model": {k: v.half() for k, v in model.state_dict().items()}}, path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory) -> bytes:
    return _tiny_checkpoint_bytes(tmp_path_factory.mktemp("gen"))


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
    assert [s.name for s in dl.resolve_names(["sam2_large", "sam2.1_hiera_tiny.pt", "sam2_large"])] == [
        "sam2_large",
        "sam2.1_tiny",
    ]
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


# --------------------------------------------------------------------------- strict verification
def test_verify_is_strict_without_building_a_model(tiny_bytes, tmp_path):
    import io

    state = torch.load(io.BytesIO(tiny_bytes), weights_only=True)["model"]
    path = tmp_path / "sam2_hiera_tiny.pt"
    path.write_bytes(tiny_bytes)
    dl.verify_checkpoint(path, MODELS["sam2_tiny"])  # our model's own state dict passes
    cases = {
        "unexpected keys \\['extra.weight'\\]": {**state, "extra.weight": torch.zeros(2)},
        "missing keys \\['no_mem_embed'\\]": {k: v for k, v in state.items() if k != "no_mem_embed"},
        "1 shape mismatches, e.g. no_mem_embed: file \\(1, 1, 128\\) vs model \\(1, 1, 256\\)": {
            **state,
            "no_mem_embed": torch.zeros(1, 1, 128),
        },
    }
    for message, bad in cases.items():
        torch.save({"model": bad}, path)
        with pytest.raises(ValueError, match=message):
            dl.verify_checkpoint(path, MODELS["sam2_tiny"])


def test_official_shape_table_fits_the_builder():
    """The shipped table (what verification checks against) matches a freshly built model of each
    of the 8 configs, key order included (tests/test_model_build.py compares all 8 too)."""
    from dp_sam2 import build_sam2
    from dp_sam2.checkpoints.files import official_shapes

    for name in ("sam2_tiny", "sam2.1_tiny"):
        model = build_sam2(name, device="cpu", apply_postprocessing=False)
        assert official_shapes(name) == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_checkpoints_layer_imports_nothing_above_it():
    import ast
    from pathlib import Path

    import dp_sam2.checkpoints as pkg

    above = (
        "dp_sam2.encoders",
        "dp_sam2.predictors",
        "dp_sam2.cache",
        "dp_sam2.tools",
        "dp_sam2.policies",
        "dp_sam2.workspaces",
        "dp_sam2.ext",
    )
    for file in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert not name.startswith(above), f"{file.name} imports {name}"


# --------------------------------------------------------------------------- the Hugging Face source
class _Hub:
    """A hub mirror on 127.0.0.1 that serves only the file route ``/{repo}/resolve/{revision}/{file}``
    (HEAD and GET, with the headers ``hf_hub_download`` reads: X-Repo-Commit, ETag, Content-Length;
    Range), as mirrors do; every other path (``/api/...``) is a 404."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, files: dict[str, bytes]):
        import hashlib

        self.files, self.paths = files, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _route(self):
                owner.paths.append((self.command, self.path))
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) != 5 or parts[2] != "resolve" or parts[3] != "main":
                    return None
                return owner.files.get(("/".join(parts[:2]), parts[4]))

            def _head(self, data, status=200, start=0):
                self.send_response(status)
                self.send_header("X-Repo-Commit", owner.COMMIT)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()

            def do_HEAD(self):
                data = self._route()
                if data is None:
                    self.send_error(404)
                    return
                self._head(data)

            def do_GET(self):
                data = self._route()
                if data is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                self._head(data, 206 if rng else 200, start)
                self.wfile.write(data[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _only_the_file_route_was_needed(hub: _Hub, route: str) -> None:
    """The file came through ``route``; anything else asked (huggingface_hub's optional
    ``/api/...`` calls) was answered 404 and did not matter."""
    assert ("GET", route) in hub.paths
    assert all(p == route or p.startswith("/api/") for _, p in hub.paths), hub.paths


def _tiny21_bytes(tmp_path) -> bytes:
    from dp_sam2 import build_sam2

    model = build_sam2("sam2.1_tiny", device="cpu", apply_postprocessing=False)
    path = tmp_path / "gen21.pt"
    torch.save({"model": {k: v.half() for k, v in model.state_dict().items()}}, path)
    return path.read_bytes()


@pytest.mark.slow
def test_cli_download_from_a_hub_mirror(tmp_path):
    """`dp-sam2 download sam2.1_tiny --source huggingface` with HF_ENDPOINT at a file-route-only
    mirror: byte-identical file at DEST/<official name>; then HF_HUB_OFFLINE=1 serves it from
    the hub cache with the server gone."""
    import os
    import subprocess
    import sys

    pytest.importorskip("huggingface_hub")
    data = _tiny21_bytes(tmp_path)
    hub = _Hub({("facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt"): data})
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    cmd = [sys.executable, "-m", "dp_sam2.tools.cli", "download", "sam2.1_tiny", "--source", "huggingface"]
    try:
        proc = subprocess.run(
            cmd + ["--dest", str(tmp_path / "a")], env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        hub.close()
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a" / "sam2.1_hiera_tiny.pt").read_bytes() == data
    assert not list((tmp_path / "a").glob("*.part"))
    _only_the_file_route_was_needed(hub, "/facebook/sam2.1-hiera-tiny/resolve/main/sam2.1_hiera_tiny.pt")
    assert len(proc.stderr.splitlines()) <= 15  # the log-style progress bar: a few lines, no \r updates
    offline = subprocess.run(
        cmd + ["--dest", str(tmp_path / "b")],
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert offline.returncode == 0, offline.stderr
    assert (tmp_path / "b" / "sam2.1_hiera_tiny.pt").read_bytes() == data
    empty = subprocess.run(
        cmd + ["--dest", str(tmp_path / "c")],
        env={**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert empty.returncode == 1 and "could not download sam2.1_tiny from the Hugging Face hub" in empty.stderr
    assert not (tmp_path / "c" / "sam2.1_hiera_tiny.pt").exists()


def test_hub_source_without_huggingface_hub(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # an import of it now fails
    with pytest.raises(ImportError, match='pip install "dp-sam2\\[huggingface\\]"'):
        dl.download(["sam2_tiny"], dest=tmp_path, source="huggingface", progress=False)
    with pytest.raises(ValueError, match="source must be one of official, huggingface"):
        dl.download(["sam2_tiny"], dest=tmp_path, source="hf")


def test_hub_source_in_process(tmp_path, monkeypatch):
    """hf_hub_download itself against the file-route-only mirror (its endpoint patched in, since
    huggingface_hub reads HF_ENDPOINT once at import)."""
    hub_mod = pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    data = _tiny21_bytes(tmp_path)
    hub = _Hub({("facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt"): data})
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    try:
        import inspect

        if "cache_dir" in inspect.signature(hub_mod.hf_hub_download).parameters:
            real = hub_mod.hf_hub_download
            monkeypatch.setattr(
                hub_mod, "hf_hub_download", lambda *a, **k: real(*a, cache_dir=str(tmp_path / "hub_cache"), **k)
            )
        (res,) = dl.download(["facebook/sam2.1-hiera-tiny"], dest=tmp_path / "d", source="huggingface", progress=False)
    finally:
        hub.close()
    assert res.path == tmp_path / "d" / "sam2.1_hiera_tiny.pt" and res.path.read_bytes() == data
    _only_the_file_route_was_needed(hub, "/facebook/sam2.1-hiera-tiny/resolve/main/sam2.1_hiera_tiny.pt")


# --------------------------------------------------------------------------- from_pretrained
@pytest.mark.slow
def test_from_pretrained_looks_locally_first_then_downloads(tmp_path, monkeypatch, tiny_bytes):
    from dp_sam2 import SAM2AutomaticMaskGenerator, SAM2ImagePredictor, SAM2VideoPredictor

    monkeypatch.setenv("DP_SAM2_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DP_SAM2_CHECKPOINT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_download(spec, dest, *, source="official", progress=True, **kwargs):
        calls.append((spec.name, source, dest))
        dest.mkdir(parents=True, exist_ok=True)
        (dest / spec.filename).write_bytes(tiny_bytes)
        return dl.DownloadResult(spec, dest / spec.filename, "downloaded", len(tiny_bytes))

    monkeypatch.setattr(dl, "download_one", fake_download)
    video = SAM2VideoPredictor.from_pretrained(
        "facebook/sam2-hiera-tiny", source="huggingface", device="cpu", image_size=128
    )
    assert isinstance(video, SAM2VideoPredictor) and video.image_size == 128
    assert calls == [("sam2_tiny", "huggingface", tmp_path / "cache")]
    state = torch.load(tmp_path / "cache" / "sam2_hiera_tiny.pt", weights_only=True)["model"]
    assert torch.equal(video.no_mem_embed.detach(), state["no_mem_embed"].float())
    # now found locally: no second download
    image = SAM2ImagePredictor.from_pretrained("sam2_tiny", device="cpu", image_size=128, mask_threshold=0.5)
    amg = SAM2AutomaticMaskGenerator.from_pretrained(
        "sam2_hiera_tiny.pt", device="cpu", image_size=128, points_per_side=4
    )
    assert len(calls) == 1 and image.mask_threshold == 0.5 and len(amg.point_grids[0]) == 16
    assert torch.equal(image.model.no_mem_embed.detach(), state["no_mem_embed"].float())
    with pytest.raises(ValueError, match="source must be one of"):
        SAM2ImagePredictor.from_pretrained("sam2_tiny", source="s3")


def test_a_page_served_instead_of_the_file_is_named(tmp_path):
    """A mirror or proxy that answers with an HTML page: the error says so (not 'damaged', no
    weights_only hint) and the page never gets the checkpoint's name."""
    page = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>login required</body></html>"
    srv = _Server({"sam2.1_hiera_tiny.pt": page})
    try:
        with pytest.raises(ValueError, match=r"is not a PyTorch checkpoint \(it starts like an HTML page") as info:
            dl.download(["sam2.1_tiny"], dest=tmp_path, base_url=srv.url, progress=False)
    finally:
        srv.close()
    assert "weights_only" not in str(info.value) and not (tmp_path / "sam2.1_hiera_tiny.pt").exists()


@pytest.mark.parametrize(
    "head, kind",
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "a JPEG image"),
        (b"\x89PNG\r\n\x1a\n\x00", "a PNG image"),
        (b"version https://git-lfs.github.com/spec/v1\n", "a Git LFS pointer"),
        (b"", "an empty file"),
        (b"PK\x03\x04rest", None),  # torch.save's zip format
        (b"\x80\x02\x8a\x0a", None),  # torch.save's legacy pickle format
    ],
)
def test_sniffing_what_a_file_is(tmp_path, head, kind):
    from dp_sam2.checkpoints.files import sniff_non_checkpoint

    path = tmp_path / "f.pt"
    path.write_bytes(head)
    found = sniff_non_checkpoint(path)
    assert found == kind if kind is None else found.startswith(kind)
