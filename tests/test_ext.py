"""dp_sam2.ext: connected components against scipy's labelling, hole filling against the official
functions (with an exact CPU stand-in for the official kernel, docs/design.md, ruling 2), bad inputs, the
CLI, the nvcc build and (on a GPU) the kernel against the CPU path."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import requires_official
from dp_sam2.ext import (
    _build,
    _cc,
    fill_holes_and_remove_sprinkles,
    fill_holes_in_mask_scores,
    get_connected_components,
    implementation,
)

ndi = pytest.importorskip("scipy.ndimage")
EIGHT = np.ones((3, 3), dtype=int)
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- oracle and masks
def scipy_components(mask: torch.Tensor):
    """(labels, counts) per image from scipy.ndimage.label with a 3x3 structure."""
    labels, counts = [], []
    for image in mask.reshape(-1, *mask.shape[-2:]).cpu().numpy():
        lab, _ = ndi.label(image != 0, structure=EIGHT)
        area = np.bincount(lab.ravel())
        area[0] = 0
        labels.append(lab)
        counts.append(area[lab])
    shape = tuple(mask.shape)
    return np.stack(labels).reshape(shape), np.stack(counts).reshape(shape)


def assert_same_components(mask, labels, counts):
    """Same partition as scipy (a bijection of labels per image, 0 <-> 0), same areas, and our
    documented labels: 1 + raster index of the component's first pixel."""
    ref_labels, ref_counts = scipy_components(mask)
    labels, counts = labels.cpu().numpy(), counts.cpu().numpy()
    assert labels.dtype == np.int32 and counts.dtype == np.int32
    np.testing.assert_array_equal(counts, ref_counts)
    h, w = mask.shape[-2:]
    for ours, ref in zip(labels.reshape(-1, h * w), ref_labels.reshape(-1, h * w)):
        np.testing.assert_array_equal(ours == 0, ref == 0)
        pairs = np.unique(np.stack([ours, ref]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
        order = np.argsort(ref, kind="stable")  # first occurrence of each scipy label
        starts = order[np.searchsorted(ref[order], np.arange(1, ref.max() + 1))]
        np.testing.assert_array_equal(ours[starts], starts + 1)


def blobby(n, h, w, seed, sigma=2.0, level=0.0):
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.standard_normal((n, 1, h, w)), sigma=(0, 0, sigma, sigma))
    return torch.from_numpy(noise > level)


def random_masks():
    gen = torch.Generator().manual_seed(0)
    cases = []
    for n, h, w in [
        (1, 1, 1),
        (2, 1, 1),
        (1, 1, 9),
        (1, 7, 1),
        (3, 2, 2),
        (2, 3, 3),
        (4, 5, 8),
        (2, 16, 16),
        (3, 17, 31),
        (2, 33, 20),
        (1, 64, 63),
        (5, 40, 41),
        (1, 129, 96),
    ]:
        for p in (0.1, 0.45, 0.6, 0.9):
            cases.append((f"rand{n}x{h}x{w}p{p}", torch.rand(n, 1, h, w, generator=gen) < p))
    for n, h, w, sigma in [(4, 37, 53, 1.5), (2, 64, 64, 3.0), (1, 101, 77, 6.0)]:
        cases.append((f"blob{n}x{h}x{w}", blobby(n, h, w, seed=h, sigma=sigma)))
    yy, xx = torch.meshgrid(torch.arange(21), torch.arange(18), indexing="ij")
    cases.append(("checker", ((yy + xx) % 2 == 0)[None, None]))  # connected only diagonally
    cases.append(("diag-stripes", ((yy + 2 * xx) % 5 == 0)[None, None]))
    cases.append(("anti-diagonal", (yy + xx == 17)[None, None]))
    cases.append(("zeros", torch.zeros(3, 1, 15, 12, dtype=torch.bool)))
    cases.append(("ones", torch.ones(2, 1, 13, 10, dtype=torch.bool)))
    cases.append(("spiral", spiral(31)[None, None]))
    return cases


def spiral(size: int) -> torch.Tensor:
    """A long 1-pixel-wide spiral (walk straight; turn right when the cell two ahead is taken):
    the worst case for label propagation."""
    grid = torch.zeros(size, size, dtype=torch.bool)
    r, c, dr, dc = 0, 0, 0, 1
    grid[r, c] = True

    def free(y, x):
        return 0 <= y < size and 0 <= x < size and not grid[y, x]

    while True:
        for _ in range(2):
            ahead, beyond = (r + dr, c + dc), (r + 2 * dr, c + 2 * dc)
            inside = 0 <= beyond[0] < size and 0 <= beyond[1] < size
            if free(*ahead) and (not inside or free(*beyond)):
                r, c = ahead
                grid[r, c] = True
                break
            dr, dc = dc, -dr
        else:
            return grid


CASES = random_masks()


# --------------------------------------------------------------------------- host emulation of the kernel
@pytest.fixture(scope="module")
def kernel_emulation(tmp_path_factory):
    """connected_components.cu compiled as plain C++ (DP_SAM2_CC_HOST_EMULATION): the kernel's
    per-block code run sequentially on the host."""
    cxx = _build.compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    out = tmp_path_factory.mktemp("emu") / "cc_emu.so"
    src = _build.SOURCE_DIR / "connected_components.cu"
    subprocess.run(
        [cxx, "-O2", "-shared", "-fPIC", "-x", "c++", "-DDP_SAM2_CC_HOST_EMULATION", str(src), "-o", str(out)],
        check=True,
    )
    lib = ctypes.CDLL(str(out))
    lib.dp_sam2_cc_emulate.argtypes = [ctypes.c_void_p] * 4 + [
        ctypes.c_int64,
        ctypes.c_int32,
        ctypes.c_int32,
        ctypes.c_int,
    ]
    lib.dp_sam2_cc_emulate.restype = ctypes.c_int

    def run(mask: torch.Tensor, reverse: bool):
        img = mask.to(torch.uint8).contiguous()
        n, _, h, w = img.shape
        labels = torch.full(img.shape, -7, dtype=torch.int32)
        counts = torch.full(img.shape, -7, dtype=torch.int32)
        scratch = torch.full((3 * n * ((h + 1) // 2) * ((w + 1) // 2),), -7, dtype=torch.int32)
        lib.dp_sam2_cc_emulate(
            img.data_ptr(), labels.data_ptr(), counts.data_ptr(), scratch.data_ptr(), n, h, w, int(reverse)
        )
        return labels, counts

    return run


IMPLS = ["dispatch", "cpu_op", "torch", "kernel_forward", "kernel_reverse"]


@pytest.mark.parametrize("impl", IMPLS)
def test_connected_components_match_scipy(impl, request):
    if impl.startswith("kernel"):
        emulate = request.getfixturevalue("kernel_emulation")
        fn = lambda m: emulate(m, reverse=impl.endswith("reverse"))  # noqa: E731
    elif impl == "cpu_op":
        if _build.cpu_library() is None:
            pytest.skip("the CPU op cannot be built here")
        fn = lambda m: _cc.cc_cpu_op(m.to(torch.uint8).contiguous())  # noqa: E731
    elif impl == "torch":
        fn = lambda m: _cc.cc_torch(m.to(torch.uint8))  # noqa: E731
    else:
        fn = get_connected_components
    for name, mask in CASES:
        labels, counts = fn(mask)
        assert labels.shape == counts.shape == mask.shape, name
        try:
            assert_same_components(mask, labels, counts)
        except AssertionError as exc:
            raise AssertionError(f"{impl} differs from scipy on {name}") from exc


@pytest.mark.slow
def test_implementations_agree_exactly_on_larger_masks():
    masks = torch.cat(
        [
            blobby(3, 190, 257, seed=5, sigma=4.0, level=0.2),
            torch.rand(3, 1, 190, 257, generator=torch.Generator().manual_seed(1)) < 0.5,
        ]
    )
    labels, counts = get_connected_components(masks)
    assert_same_components(masks, labels, counts)
    t_labels, t_counts = _cc.cc_torch(masks.to(torch.uint8))
    assert torch.equal(labels, t_labels) and torch.equal(counts, t_counts)


def test_input_dtypes_and_devices():
    mask = blobby(2, 23, 19, seed=3)
    ref = get_connected_components(mask)
    for variant in (mask.to(torch.uint8) * 255, mask.to(torch.int64) * -3, mask.to(torch.uint8)):
        got = get_connected_components(variant)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    strided = torch.zeros(2, 1, 23, 38, dtype=torch.bool)
    strided[..., ::2] = mask
    got = get_connected_components(strided[..., ::2])  # non-contiguous view
    assert torch.equal(got[0], ref[0])
    empty = get_connected_components(torch.zeros(0, 1, 5, 4, dtype=torch.bool))
    assert empty[0].shape == (0, 1, 5, 4) and empty[0].dtype == torch.int32


def test_torch_fallback_when_the_cpu_op_cannot_be_built(monkeypatch):
    """No compiler: one warning, then the exact torch path (same labels as the CPU op)."""
    mask = blobby(2, 30, 27, seed=9)
    ref = get_connected_components(mask)

    def no_build(*args, **kwargs):
        raise _build.BuildUnavailable("no C++ compiler (c++ not on PATH)")

    monkeypatch.setattr(_build, "_state", _build._State())
    monkeypatch.setattr(_build, "build", no_build)
    monkeypatch.setattr(_build, "is_built", lambda kind: False)
    with pytest.warns(RuntimeWarning, match="could not build or load the CPU connected-components op"):
        got = get_connected_components(mask)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        get_connected_components(mask)
    assert implementation("cpu") == "torch"
    if not torch.cuda.is_available():
        assert implementation("cuda") == "torch"


def test_bad_inputs():
    with pytest.raises(TypeError, match=r"torch.Tensor mask of shape \[N, 1, H, W\], got ndarray"):
        get_connected_components(np.zeros((1, 1, 4, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\], got shape \(4, 4\)"):
        get_connected_components(torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"got shape \(1, 2, 4, 4\)"):
        get_connected_components(torch.zeros(1, 2, 4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"bool or integer mask, got torch.float32.*scores > 0"):
        get_connected_components(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="max_area must be positive, got 0"):
        fill_holes_in_mask_scores(torch.zeros(1, 1, 4, 4), 0)
    with pytest.raises(TypeError, match="max_area must be a number, got str"):
        fill_holes_in_mask_scores(torch.zeros(1, 1, 4, 4), "8")
    with pytest.raises(TypeError, match="floating-point mask scores.*got torch.int64"):
        fill_holes_in_mask_scores(torch.zeros(1, 1, 4, 4, dtype=torch.long), 8)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\], got shape \(4, 4\)"):
        fill_holes_and_remove_sprinkles(torch.zeros(4, 4), 8, 8)


# --------------------------------------------------------------------------- hole filling vs the official
def _scipy_stand_in(mask):
    labels, counts = scipy_components(mask)
    return torch.from_numpy(labels).int(), torch.from_numpy(counts).int()


def _scores(n, c, h, w, seed):
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.standard_normal((n, c, h, w)), sigma=(0, 0, 1.2, 1.2))
    return torch.from_numpy(noise * 8).float()


@requires_official
@pytest.mark.parametrize("max_area", [1, 4, 17.5, 200, 10**6])
def test_fill_holes_matches_official(monkeypatch, max_area):
    import sam2.utils.misc as official

    monkeypatch.setattr(official, "get_connected_components", _scipy_stand_in)
    scores = _scores(3, 1, 45, 38, seed=int(max_area) % 97)
    for dtype in (torch.float32, torch.bfloat16):
        x = scores.to(dtype)
        ref = official.fill_holes_in_mask_scores(x, max_area)
        got = fill_holes_in_mask_scores(x, max_area)
        assert got.dtype == ref.dtype and torch.equal(got, ref)
    assert not torch.equal(fill_holes_in_mask_scores(scores, 200), scores)  # holes were filled


@requires_official
@pytest.mark.parametrize("hole,sprinkle", [(0, 0), (6, 0), (0, 9), (6, 9), (50, 3)])
def test_postprocess_matches_official_transforms(monkeypatch, hole, sprinkle):
    import sam2.utils.misc as official
    from sam2.utils.transforms import SAM2Transforms

    monkeypatch.setattr(official, "get_connected_components", _scipy_stand_in)
    scores = _scores(2, 3, 40, 33, seed=hole + sprinkle)
    transforms = SAM2Transforms(resolution=40, mask_threshold=0.0, max_hole_area=hole, max_sprinkle_area=sprinkle)
    ref = transforms.postprocess_masks(scores, (40, 33))  # same size: the resize is the identity
    got = fill_holes_and_remove_sprinkles(scores, hole, sprinkle, mask_threshold=0.0)
    assert torch.equal(got, ref)


def test_fill_holes_semantics_by_hand():
    scores = torch.full((1, 1, 7, 7), 2.0)
    scores[0, 0, 1, 1] = -1.0  # 1-pixel hole
    scores[0, 0, 3:5, 3:5] = -0.5  # 4-pixel hole
    scores[0, 0, 6, :] = -3.0  # background strip on the border: 7 pixels, also a "hole"
    out = fill_holes_in_mask_scores(scores, 4)
    expected = scores.clone()
    expected[0, 0, 1, 1] = 0.1
    expected[0, 0, 3:5, 3:5] = 0.1
    assert torch.equal(out, expected)
    assert torch.equal(fill_holes_in_mask_scores(scores, 7)[0, 0, 6], torch.full((7,), 0.1))


# --------------------------------------------------------------------------- CLI, builds, GPU
def _run_cli(*args, env_extra=None, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "dp_sam2.ext", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_status_and_build_cli(tmp_path, monkeypatch, capsys):
    env = {"DP_SAM2_CACHE": str(tmp_path)}
    status = _run_cli("status", env_extra=env)  # nothing built: says so, builds nothing
    assert status.returncode == 0, status.stderr
    assert "in use for CPU tensors:" in status.stdout and "CUDA kernel:" in status.stdout
    assert not any(tmp_path.iterdir())
    if _build.cpu_build_blocker():
        assert "in use for CPU tensors:  torch" in status.stdout
        return
    assert "CPU op:      not built yet (compiled on first use" in status.stdout
    built = _run_cli("build", "--cpu-only", env_extra=env)
    assert built.returncode == 0, built.stdout + built.stderr
    assert f"CPU op: built: {tmp_path}" in built.stdout
    monkeypatch.setenv("DP_SAM2_CACHE", str(tmp_path))
    from dp_sam2.ext.__main__ import main

    assert main(["status"]) == 0
    assert f"CPU op:      built: {tmp_path}" in capsys.readouterr().out


@pytest.mark.slow
def test_import_compiles_nothing(tmp_path):
    probe = (
        "import sys, dp_sam2.ext as e; "
        "print(sorted(m for m in ('torch.utils.cpp_extension', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, DP_SAM2_CACHE=str(tmp_path)),
        cwd=REPO,
    )
    assert out.stdout.strip() == "[]", out.stderr
    assert not any(tmp_path.iterdir())


def test_arch_list_coverage():
    assert _build.arch_list_covers("8.0;8.6;8.9;9.0+PTX", (8, 6))
    assert _build.arch_list_covers("8.0;8.6;8.9;9.0+PTX", (8, 7))  # sm_80 SASS runs on 8.7
    assert _build.arch_list_covers("8.0;8.6;8.9;9.0+PTX", (12, 0))  # PTX JIT
    assert not _build.arch_list_covers("8.0;8.6;8.9;9.0+PTX", (7, 5))
    assert not _build.arch_list_covers("9.0", (10, 0))


@pytest.mark.slow
def test_nvcc_builds_the_cuda_kernel(tmp_path):
    """Compiles the kernel with nvcc into a fresh cache (one compile, a minute or two)."""
    blocker = _build.cuda_build_blocker()
    if blocker:
        pytest.skip(blocker)
    env = {"DP_SAM2_CACHE": str(tmp_path)}
    if not torch.cuda.is_available():
        env["TORCH_CUDA_ARCH_LIST"] = ""  # none set and no GPU: the documented default list
    out = _run_cli("build", "--require-cuda", env_extra=env, timeout=1200)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"CUDA kernel: built: {tmp_path}" in out.stdout
    if not torch.cuda.is_available():
        assert f"TORCH_CUDA_ARCH_LIST={_build.DEFAULT_CUDA_ARCH_LIST}" in out.stdout
    probe = (
        "import sys, torch; torch.ops.load_library(sys.argv[1]); "
        "print(torch.ops.dp_sam2_ext.connected_components.default._schema)"
    )
    lib = next(tmp_path.glob("ext/cuda-*/dp_sam2_cc_cuda.so"))
    loaded = subprocess.run([sys.executable, "-c", probe, str(lib)], capture_output=True, text=True, timeout=120)
    assert "connected_components(Tensor mask) -> (Tensor labels, Tensor counts)" in loaded.stdout, loaded.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_kernel_equals_cpu_path():
    assert implementation("cuda", build=True) == "cuda kernel"
    gen = torch.Generator().manual_seed(0)
    masks = [m for _, m in CASES] + [
        torch.rand(64, 1, 256, 256, generator=gen) < 0.5,
        blobby(2, 1023, 1025, seed=1, sigma=8.0),
        torch.rand(70000, 1, 2, 3, generator=gen) < 0.5,
    ]
    for mask in masks:
        labels, counts = get_connected_components(mask.cuda())
        assert labels.is_cuda
        ref_labels, ref_counts = _cc.cc_cpu_op(mask.to(torch.uint8).contiguous())
        assert torch.equal(labels.cpu(), ref_labels) and torch.equal(counts.cpu(), ref_counts)
    scores = _scores(2, 1, 64, 61, seed=0).cuda()
    assert torch.equal(fill_holes_in_mask_scores(scores, 30).cpu(), fill_holes_in_mask_scores(scores.cpu(), 30))
