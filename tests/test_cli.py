"""Every `dp-sam2` command: --help, the demo (few steps), segment, track, viz, cache-features,
info, and their errors. Models are tiny with generated (random) checkpoints."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from conftest import synthetic_photo as picture
from dp_sam2.checkpoints.registry import DEFAULT_MODEL
from dp_sam2.tools.cli import build_parser, main
from test_cache import assert_zarr2_layout

COMMANDS = ["demo", "download", "segment", "track", "viz", "cache-features", "info"]


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    """Generated checkpoints under their official names: sam2_hiera_tiny.pt, sam2.1_hiera_tiny.pt."""
    from dp_sam2 import build_sam2
    from dp_sam2.checkpoints.registry import MODELS

    folder = tmp_path_factory.mktemp("ckpt_dir")
    for name in ("sam2_tiny", "sam2.1_tiny"):
        torch.manual_seed(3)
        model = build_sam2(name, device="cpu", apply_postprocessing=False)
        torch.save({"model": {k: v.half() for k, v in model.state_dict().items()}}, folder / MODELS[name].filename)
    return folder


def test_help_on_every_command(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)  # the contract's commands (docs/design.md §2), and any added since
    for cmd in sub.choices:
        with pytest.raises(SystemExit) as info:
            main([cmd, "--help"])
        assert info.value.code == 0
        assert f"usage: dp-sam2 {cmd}" in capsys.readouterr().out
    assert main([]) == 0 and "COMMAND" in capsys.readouterr().out


@pytest.mark.slow
def test_console_script_is_installed():
    proc = subprocess.run(["dp-sam2", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "cache-features" in proc.stdout


def test_bad_arguments_exit_with_a_message(capsys):
    with pytest.raises(SystemExit) as info:
        main(["segment", "x.png", "--point", "1,2,3", "--out", "o.png"])
    assert info.value.code == 2 and "expected a point X,Y" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["track", "v.mp4", "--point", "1.5,2,3", "--out", "o"])
    assert "frame index must be a non-negative integer" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_writes_pictures(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DP_SAM2_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("DP_SAM2_CHECKPOINT_DIR", raising=False)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        assert main(["demo", "--out", "out", "--quick", "--steps", "6", "--offline"]) == 0
    captured = capsys.readouterr()
    assert f"dp-sam2 download {DEFAULT_MODEL}" in captured.err  # the loud warning says how to get real weights
    for name in ("loss_curve.png", "actions.png", "features_pca.png", "mask_overlay.png", "track.png"):
        path = tmp_path / "out" / name
        assert path.is_file() and str(path.resolve()) in captured.out
        with Image.open(path) as img:
            assert img.width > 100 and img.height > 100 and np.asarray(img).std() > 1
            assert_says_random_weights(img)  # random weights never look like a result (issue 26)
        line = next(line for line in captured.out.splitlines() if str(path.resolve()) in line)
        assert "RANDOM weights" in line  # and the summary line says so too
    mask_line = next(line for line in captured.out.splitlines() if "mask_overlay.png" in line)
    assert "% of the image" in mask_line and "mask of the block" not in mask_line  # what the picture shows
    track_line = next(line for line in captured.out.splitlines() if "track.png" in line)
    assert "a mask on " in track_line and " frames" in track_line
    root = zarr.open_group(str(tmp_path / "out" / "pusht_demo.zarr"), mode="r")
    assert root["data"]["img"].shape == (16, 96, 96, 3) and "dp_sam2_features" in root
    assert_zarr2_layout(tmp_path / "out" / "pusht_demo.zarr")  # DP's zarr 2.x opens the buffer and its cache


def test_demo_uses_official_weights_when_found(tmp_path, monkeypatch, ckpt_dir, recwarn):
    monkeypatch.setenv("DP_SAM2_CHECKPOINT_DIR", str(ckpt_dir))
    from dp_sam2.tools.commands import find_checkpoint
    from dp_sam2.tools.demo import demo_weights

    assert find_checkpoint("sam2_tiny", None, random_weights=True) == ckpt_dir / "sam2_hiera_tiny.pt"
    assert demo_weights(offline=True) == ckpt_dir / "sam2.1_hiera_tiny.pt"  # the default model's file
    assert not [w for w in recwarn if "RANDOM" in str(w.message)]


def test_one_default_model_everywhere():
    """The demo, segment, track and viz use one model, and the demo fetches that one (issue 26)."""
    from dp_sam2.checkpoints.registry import DEFAULT_MODEL as default
    from dp_sam2.tools import commands, demo

    assert default == "sam2.1_tiny"
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices["segment"].get_default("model") == default
    assert sub.choices["track"].get_default("model") == default
    assert sub.choices["viz"].get_default("obs_encoder") == default
    assert f"`dp-sam2 download {default}`" in sub.choices["demo"].description
    for fn in (commands.segment_image, commands.track_video, commands.visualize_features):
        defaults = fn.__defaults__ + tuple((fn.__kwdefaults__ or {}).values())
        assert default in defaults and not {"sam2_tiny", "sam2_large"} & set(defaults), fn.__name__
    assert demo.DEFAULT_MODEL == default


def test_segment(tmp_path, ckpt_dir, monkeypatch, capsys):
    image = picture(tmp_path / "photo.png")
    out = tmp_path / "mask.png"
    args = [
        "segment",
        str(image),
        "--point",
        "65,55",
        "--model",
        "sam2.1_tiny",
        "--image-size",
        "256",
        "--checkpoint",
        str(ckpt_dir / "sam2.1_hiera_tiny.pt"),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "score" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.size == (160, 120)
    # with a box too
    assert main(args + ["--box", "30,20,100,90"]) == 0
    # the result is the image predictor's best mask, drawn over the image
    from dp_sam2.tools.commands import segment_image

    res = segment_image(
        image,
        point=(65, 55),
        model="sam2.1_tiny",
        checkpoint=str(ckpt_dir / "sam2.1_hiera_tiny.pt"),
        out=tmp_path / "m2.png",
        image_size=256,
    )
    drawn = np.asarray(Image.open(res.path)).astype(int)
    original = np.asarray(Image.open(image)).astype(int)
    if res.area:
        assert np.abs(drawn - original)[res.mask].mean() > 5
    # errors: no prompt, a point outside, no checkpoint
    assert main(["segment", str(image), "--out", str(out), "--checkpoint", str(ckpt_dir / "sam2.1_hiera_tiny.pt")]) == 1
    assert "give a prompt" in capsys.readouterr().err
    assert main(["segment", str(image), "--point", "500,5", "--out", str(out)]) == 1
    assert "outside the 160x120" in capsys.readouterr().err
    monkeypatch.setenv("DP_SAM2_CACHE", str(tmp_path / "nothing"))
    monkeypatch.delenv("DP_SAM2_CHECKPOINT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["segment", str(image), "--point", "5,5", "--model", "sam2_small", "--out", str(out)]) == 1
    assert "dp-sam2 download sam2_small" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "none.png"), "--point", "5,5", "--out", str(out)]) == 1
    assert "image not found" in capsys.readouterr().err


@pytest.mark.slow
def test_track_folder_and_video_file(tmp_path, ckpt_dir, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        picture(frames / f"{i}.png", size=(128, 96), shift=4 * i)
    out = tmp_path / "track"
    ckpt = str(ckpt_dir / "sam2.1_hiera_tiny.pt")
    assert (
        main(
            ["track", str(frames), "--point", "0,65,55", "--out", str(out), "--image-size", "256", "--checkpoint", ckpt]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png", "track_sheet.png"]
    assert "wrote 4 files" in capsys.readouterr().out
    # a video file, decoded with PyAV, clicked on a later frame (tracks backwards too)
    av = pytest.importorskip("av")
    video = tmp_path / "clip.mp4"
    with av.open(str(video), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.asarray(Image.open(frames / f"{i}.png")), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert (
        main(
            [
                "track",
                str(video),
                "--point",
                "1,70,55",
                "--out",
                str(tmp_path / "t2"),
                "--image-size",
                "256",
                "--checkpoint",
                ckpt,
                "--max-frames",
                "2",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "t2").iterdir())) == 3
    assert main(["track", str(frames), "--point", "7,65,55", "--out", str(out), "--checkpoint", ckpt]) == 1
    assert "the video has 3 frames" in capsys.readouterr().err


@pytest.mark.slow
def test_viz(tmp_path, ckpt_dir, capsys):
    image = picture(tmp_path / "photo.png")
    out = tmp_path / "pca.png"
    assert (
        main(
            [
                "viz",
                str(image),
                "--obs-encoder",
                "sam2_tiny",
                "--image-size",
                "128",
                "--checkpoint",
                str(ckpt_dir / "sam2_hiera_tiny.pt"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    with Image.open(out) as img:
        assert img.height > 200 and img.width > 400
    from dp_sam2.tools.draw import pca_rgb

    feats = np.random.default_rng(0).normal(size=(16, 5, 7))
    rgb = pca_rgb(feats)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8 and rgb.std() > 10
    with pytest.raises(ValueError, match=r"\(C, h, w\)"):
        pca_rgb(np.zeros((3, 3)))
    many = pca_rgb(np.stack([feats, feats]))  # one PCA over both maps: same colours for the same features
    assert many.shape == (2, 5, 7, 3) and np.array_equal(many[0], many[1])


@pytest.mark.slow
def test_cache_features_command(tmp_path, ckpt_dir, capsys):
    from test_cache import write_replay

    replay = write_replay(tmp_path / "replay.zarr")
    args = [
        "cache-features",
        "--zarr",
        str(replay),
        "--obs-encoder",
        "sam2_tiny",
        "--image-size",
        "64",
        "--checkpoint",
        str(ckpt_dir / "sam2_hiera_tiny.pt"),
        "--batch-size",
        "8",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "16 frames" in out and "complete" in out and "(16 frames encoded now)" in out
    assert main(args) == 0 and "(0 frames encoded now)" in capsys.readouterr().out  # resumable: nothing left
    assert main(args[:-2] + ["--keys", "state"]) == 1
    assert "not an rgb array" in capsys.readouterr().err


def test_info(tmp_path, ckpt_dir, monkeypatch, capsys):
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    monkeypatch.setenv("DP_SAM2_CHECKPOINT_DIR", str(ckpt_dir))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"torch {torch.__version__.split('+')[0]}" in out
    assert "connected components: cpu: " in out and "device: " in out
    assert f"sam2_hiera_tiny.pt         {ckpt_dir / 'sam2_hiera_tiny.pt'}" in out
    assert "not found (dp-sam2 download sam2_large)" in out or "sam2_hiera_large.pt" in out
    assert "Hydra sees the obs_encoder group: yes: sam2.1_base_plus" in out
    assert "Hydra sees the umi_obs_encoder group: " in out
    # the line Troubleshooting names is the last one (issue 26)
    assert out.rstrip("\n").splitlines()[-1].startswith("Hydra sees the obs_encoder group: yes: ")
    assert not GlobalHydra.instance().is_initialized()  # info leaves Hydra as it found it
    assert "official     https://dl.fbaipublicfiles.com" in out and "HF_ENDPOINT unset" in out
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080")
    from dp_sam2.tools import info

    lines = info.source_lines() + info.optional_lines()
    assert any("HF_ENDPOINT=http://mirror.example:8080" in line for line in lines)
    # usable only when both our module and its dependency are importable (found, not imported)
    states = {line.split(":")[0].strip(): line for line in lines if " + " in line}
    assert [name.split()[-1] for name in states] == ["robomimic", "torch.distributed", "accelerate", "lerobot"]
    assert states[next(n for n in states if "torch.distributed" in n)].endswith(": usable")  # torch has it
    have_robomimic = importlib.util.find_spec("robomimic") is not None
    have_policies = importlib.util.find_spec("dp_sam2.policies") is not None
    assert (
        "usable" in states["hybrid DP policies         dp_sam2.policies + robomimic"].split(": ", 1)[1].split(" ")[0]
    ) == (have_robomimic and have_policies)
    assert "robomimic" not in sys.modules or have_robomimic  # never imported by info


def test_demo_weights_fall_back_fast_or_download(tmp_path, monkeypatch, capsys):
    """--offline never touches the network; a closed port, a server that drops the connection and
    a host that does not answer all mean random weights within the 5 s budget; a server that has
    the file means a verified download into the user cache."""
    import socket
    import threading
    import time

    from dp_sam2.checkpoints import download as dl
    from dp_sam2.tools.demo import demo_weights
    from test_download import _Server

    monkeypatch.setenv("DP_SAM2_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DP_SAM2_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(dl, "check_reachable", _fail_if_called)
    assert demo_weights(offline=True) is None
    assert "dp-sam2 download sam2.1_tiny" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.setenv("DP_SAM2_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DP_SAM2_CHECKPOINT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    dropper = socket.socket()  # accepts, then closes at once: a dropped connection
    dropper.bind(("127.0.0.1", 0))
    dropper.listen(8)

    def drop():
        while True:
            try:
                conn, _ = dropper.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=drop, daemon=True).start()
    silent = socket.socket()  # listens but never accepts (backlog 0): connects hang or stall
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    try:
        for url in (
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{dropper.getsockname()[1]}",
            f"http://127.0.0.1:{silent.getsockname()[1]}",
        ):
            start = time.monotonic()
            assert demo_weights(base_url=url, timeout=2.0) is None
            assert time.monotonic() - start < 12.0
            err = capsys.readouterr()
            assert "download failed, continuing without it" in err.out and "RANDOM weights" in err.err
    finally:
        dropper.close()
        silent.close()
    assert not (tmp_path / "cache" / "sam2.1_hiera_tiny.pt").exists()

    import test_download

    data = test_download._tiny21_bytes(tmp_path)
    server = _Server({"sam2.1_hiera_tiny.pt": data})  # the demo downloads the default model's file
    try:
        path = demo_weights(base_url=server.url)
    finally:
        server.close()
    assert path == tmp_path / "cache" / "sam2.1_hiera_tiny.pt" and path.read_bytes() == data


def _fail_if_called(*args, **kwargs):
    raise AssertionError("--offline must not touch the network")


def test_library_calls_leave_the_callers_rng_alone(tmp_path):
    """Random-init weights are the same every time (seed 0) and the caller's RNG is untouched."""
    from dp_sam2.cache import CacheKey, Source, build_encoder
    from dp_sam2.tools.commands import build_model

    key = CacheKey("sam2_tiny", "random-init", 64)
    source = Source(("image",), 1, "", {"image": (64, 64, 3)})
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = build_encoder(key, source, None, "cpu")
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(7)
    second = build_encoder(key, source, None, "cpu")
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    torch.manual_seed(123)
    model = build_model("sam2_tiny", image_size=64, device="cpu", random_weights=True)
    assert torch.equal(torch.random.get_rng_state(), before)
    again = build_model("sam2_tiny", image_size=64, device="cpu", random_weights=True)
    assert torch.equal(model.no_mem_embed, again.no_mem_embed)
    assert not torch.equal(model.no_mem_embed, torch.zeros_like(model.no_mem_embed))


@pytest.mark.slow
def test_python_m_entry(tmp_path):
    cmd = [sys.executable, "-m", "dp_sam2.tools.cli", "download", "no_such_model", "--dest", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 1 and "unknown SAM 2 model" in proc.stderr


# --------------------------------------------------------------------------- logs
class _Stream:
    def __init__(self, tty: bool):
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_progress_bars_fit_logs(monkeypatch):
    from dp_sam2 import _progress

    log = _Stream(tty=False)
    bar = _progress.progress(range(1000), desc="work", file=log, unit="step")
    assert isinstance(bar, _progress.LogProgress)
    assert sum(1 for _ in bar) == 1000
    lines = log.text.splitlines()
    assert "\r" not in log.text and 10 <= len(lines) <= 12
    assert "work:   0%" in lines[0] and "1000/1000" in lines[-1] and "100%" in lines[-1]
    assert [int(line.split("%")[0].split()[-1]) for line in lines[1:-1]] == list(range(10, 100, 10))[: len(lines) - 2]
    # a download-style bar: updates of bytes, resumed from an offset, total known
    log = _Stream(tty=False)
    with _progress.progress(
        total=100 << 20, initial=50 << 20, unit="B", unit_scale=True, unit_divisor=1024, desc="file.pt", file=log
    ) as bar:
        for _ in range(50):
            bar.update(1 << 20)
    assert len(log.text.splitlines()) <= 7 and "100M/100M" in log.text.splitlines()[-1]
    # no total: lines after 5, 10, 20 ... seconds only
    clock = [0.0]
    monkeypatch.setattr(_progress.time, "monotonic", lambda: clock[0])
    log = _Stream(tty=False)
    bar = _progress.progress(desc="stream", file=log)
    for _ in range(600):  # ten minutes, one update a second
        clock[0] += 1.0
        bar.update()
    bar.close()
    assert len(log.text.splitlines()) == 2 + 7  # start, 5/10/20/40/80/160/320 s, end
    # disabled: nothing at all; on a terminal: tqdm as usual
    log = _Stream(tty=False)
    list(_progress.progress(range(5), file=log, disable=True))
    assert log.text == ""
    from tqdm.auto import tqdm

    assert isinstance(_progress.progress(range(3), file=_Stream(tty=True)), tqdm)


@pytest.mark.slow
def test_demo_log_fits_in_150_lines(tmp_path):
    """`dp-sam2 demo --offline` with stdout and stderr redirected to a file: at most 150 lines,
    a carriage return counted as a line break."""
    log = tmp_path / "demo.log"
    env = {**os.environ, "DP_SAM2_CACHE": str(tmp_path / "empty_cache")}
    env.pop("DP_SAM2_CHECKPOINT_DIR", None)
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "dp_sam2.tools.cli", "demo", "--out", str(tmp_path / "out"), "--offline", "--quick"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
            timeout=1200,
        )
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    lines = text.replace("\r", "\n").splitlines()
    assert len(lines) <= 150, f"{len(lines)} lines:\n{text[-3000:]}"
    assert "RANDOM weights" in text and "training the diffusion action head: 100%" in text
    assert "downloading" not in text  # --offline: no attempt


# --------------------------------------------------------------------------- first contact (issue 26)
def assert_says_random_weights(img) -> None:
    """A picture made with random weights says so: its Title, and a red strip with the words on top."""
    title = getattr(img, "text", {}).get("Title", "")
    assert title.startswith("RANDOM WEIGHTS - not a result"), title
    top = np.asarray(img.convert("RGB"))[:3, :3].reshape(-1, 3)
    assert (top == (200, 0, 0)).all(), top


@pytest.fixture
def no_weights_anywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("DP_SAM2_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("DP_SAM2_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _no_model_may_be_built(monkeypatch):
    import hydra.utils

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the arguments were checked")

    monkeypatch.setattr(hydra.utils, "instantiate", refuse)


@pytest.mark.slow
def test_random_weights_pictures_say_so(no_weights_anywhere, capsys):
    tmp_path = no_weights_anywhere
    image = picture(tmp_path / "photo.png")
    args = ["--image-size", "128", "--device", "cpu", "--random-weights"]
    with pytest.warns(UserWarning, match="RANDOM weights"):
        assert main(["segment", str(image), "--point", "65,55", "--out", str(tmp_path / "m.png"), *args]) == 0
    out = capsys.readouterr().out
    assert "% of the image" in out and "RANDOM weights" in out and "`dp-sam2 download sam2.1_tiny`" in out
    with Image.open(tmp_path / "m.png") as img:
        assert_says_random_weights(img)
        assert img.width == 160 and img.height > 120  # the strip sits above the picture
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        picture(frames / f"{i}.png", size=(128, 96), shift=4 * i)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        assert main(["track", str(frames), "--point", "0,40,40", "--out", str(tmp_path / "t"), *args]) == 0
    out = capsys.readouterr().out
    assert "wrote 3 files" in out and "a mask on " in out and "of 2 frames" in out and "RANDOM weights" in out
    for name in ("00000.png", "00001.png", "track_sheet.png"):
        with Image.open(tmp_path / "t" / name) as img:
            assert_says_random_weights(img)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        assert main(["viz", str(image), "--out", str(tmp_path / "v.png"), *args]) == 0
    assert "RANDOM weights" in capsys.readouterr().out
    with Image.open(tmp_path / "v.png") as img:
        assert_says_random_weights(img)


def test_mask_notes_and_titles(tmp_path):
    from dp_sam2.tools.draw import mask_note, save_picture, titled

    assert "EMPTY" in mask_note(np.zeros((10, 10), bool))
    assert "covers 90% of the image" in mask_note(np.arange(100).reshape(10, 10) >= 10)
    assert mask_note(np.arange(100).reshape(10, 10) < 20) == ""
    real = titled(np.zeros((20, 30, 3), np.uint8), "a mask", random_weights=False)
    assert real.size == (30, 20) and real.info["title"] == "a mask"  # real weights: pixels unchanged
    fake = titled(np.zeros((20, 30, 3), np.uint8), "a mask", random_weights=True)
    assert fake.width == 30 and fake.height > 20 and fake.info["title"].startswith("RANDOM WEIGHTS")
    with Image.open(save_picture(fake, tmp_path / "fake.png")) as img:
        assert_says_random_weights(img)


def test_segment_with_real_weights_has_no_warning_strip(tmp_path, ckpt_dir, capsys):
    image = picture(tmp_path / "photo.png")
    ckpt = str(ckpt_dir / "sam2.1_hiera_tiny.pt")
    out = tmp_path / "m.png"
    assert (
        main(
            ["segment", str(image), "--point", "65,55", "--image-size", "128", "--checkpoint", ckpt, "--out", str(out)]
        )
        == 0
    )
    assert "RANDOM" not in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.size == (160, 120) and not img.text["Title"].startswith("RANDOM")


def test_explicit_missing_checkpoint_is_an_error_whatever_else_is_given(no_weights_anywhere, monkeypatch, capsys):
    tmp_path = no_weights_anywhere
    _no_model_may_be_built(monkeypatch)
    image = picture(tmp_path / "photo.png")
    missing = str(tmp_path / "nope" / "sam2.1_hiera_tiny.pt")
    for argv in (
        ["segment", str(image), "--point", "5,5", "--out", "m.png"],
        ["track", str(tmp_path), "--point", "0,5,5", "--out", "t"],
        ["viz", str(image), "--out", "v.png"],
        ["cache-features", "--zarr", str(tmp_path / "none.zarr")],
    ):
        for extra in (["--random-weights"], []):
            monkeypatch.setenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", "1")  # nor does the environment variable
            if argv[0] == "track":
                picture(tmp_path / "0.png")
            assert main([*argv, "--checkpoint", missing, *extra]) == 1, argv
            err = capsys.readouterr().err
            assert f"SAM 2 checkpoint {missing!r} not found" in err, err
            assert "dp-sam2 download sam2.1_tiny" in err and "--random-weights" in err, err
    monkeypatch.delenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT")
    # without --checkpoint and nothing found: the download command and --random-weights, no DP variable
    assert main(["segment", str(image), "--point", "5,5", "--out", "m.png"]) == 1
    err = capsys.readouterr().err
    assert "dp-sam2 download sam2.1_tiny" in err and "add --random-weights" in err
    assert "DP_SAM2_ALLOW_MISSING_CHECKPOINT" not in err
    assert f"{Path.cwd() / 'checkpoints' / 'sam2.1_hiera_tiny.pt'}" in err  # every place tried


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, monkeypatch, capsys):
    _no_model_may_be_built(monkeypatch)  # named before any model is built
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (32, 32), (10, 20, 30)).save(photo)
    image = picture(tmp_path / "photo.png")
    argv = ["segment", str(image), "--point", "5,5", "--image-size", "64", "--device", "cpu", "--out", "m.png"]
    assert main([*argv, "--checkpoint", str(photo)]) == 1
    err = capsys.readouterr().err
    assert f"{photo} is not a PyTorch checkpoint (it starts like a JPEG image)" in err, err
    assert "weights_only" not in err
    html = tmp_path / "sam2.1_hiera_tiny.pt"
    html.write_text("<!DOCTYPE html><html><body>404</body></html>")
    from dp_sam2.checkpoints.files import read_checkpoint_file

    with pytest.raises(ValueError, match=r"is not a PyTorch checkpoint \(it starts like an HTML page"):
        read_checkpoint_file(html)


def test_argument_checks_run_before_any_model_is_built(tmp_path, ckpt_dir, monkeypatch, capsys):
    _no_model_may_be_built(monkeypatch)
    image = picture(tmp_path / "photo.png")
    ckpt = str(ckpt_dir / "sam2.1_hiera_tiny.pt")
    assert main(["segment", str(image), "--out", str(tmp_path / "m.png"), "--checkpoint", ckpt]) == 1
    assert "give a prompt" in capsys.readouterr().err
    for cmd in (
        ["segment", str(image), "--point", "5,5", "--out", "m.png"],
        ["track", str(tmp_path), "--point", "0,5,5", "--out", "t"],
        ["viz", str(image), "--out", "v.png"],
        ["cache-features", "--zarr", "x.zarr"],
    ):
        with pytest.raises(SystemExit) as info:
            main([*cmd, "--image-size", "500"])
        assert info.value.code == 2
        assert "must be a positive multiple of 32 (e.g. 480 or 512), got 500" in capsys.readouterr().err
    from dp_sam2.tools.commands import segment_image, track_video

    with pytest.raises(ValueError, match="multiple of 32"):
        segment_image(image, point=(5, 5), checkpoint=ckpt, image_size=500, out=tmp_path / "m.png")
    with pytest.raises(ValueError, match="give a prompt"):
        segment_image(image, checkpoint=ckpt, out=tmp_path / "m.png")
    with pytest.raises(ValueError, match="the video has 1 frames"):
        track_video(tmp_path, point=(3, 5, 5), checkpoint=ckpt, out_dir=tmp_path / "t")


def test_near_miss_model_name(tmp_path, capsys):
    image = picture(tmp_path / "photo.png")
    assert main(["segment", str(image), "--point", "5,5", "--model", "sam2_larg", "--out", "m.png"]) == 1
    assert "did you mean 'sam2_large'?" in capsys.readouterr().err
    assert main(["download", "sam2.1_tinny", "--dest", str(tmp_path)]) == 1
    assert "did you mean 'sam2.1_tiny'?" in capsys.readouterr().err


def test_sizes_on_the_command_line_use_the_one_size_parser():
    """``--crop-shape`` / ``--resize-shape`` read sizes as configs do (encoders.obs.inputs.parse_hw),
    and a bad one is an argparse error that says what was expected and what came."""
    import argparse

    from dp_sam2.tools.arg_types import hw_pair

    assert hw_pair("76,76") == (76, 76)
    assert hw_pair("96, 128") == (96, 128)
    for bad in ("76,0", "a,b", "1,2,3", "76.5,76"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"H,W \(pixels\).*must be a size.*got"):
            hw_pair(bad)
