"""The frozen-feature cache: equal to the live encoder, keyed (a stale cache is refused),
resumable, sharded under torchrun (2 ranks == 1 process), and the dataset wrapper inside a
DP-shaped setup (a small stand-in for Diffusion Policy's dataset classes, written here)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import rel_err
from dp_sam2 import cache as C
from dp_sam2.cache import write_array

SIZE = 64  # encoder input: features (256, 4, 4)
EPISODES = (5, 7, 4)


def write_replay(path: Path, episodes=EPISODES, hw=(40, 48), seed=0) -> Path:
    """A Push-T-shaped replay buffer: data/img (N, H, W, 3) float32 0..255, state, action."""
    rng = np.random.default_rng(seed)
    n = sum(episodes)
    root = C.store.open_group(path, "w")  # zarr format 2 (DP's zarr 2.x reads it) with zarr 2 or 3
    yy, xx = np.mgrid[0 : hw[0], 0 : hw[1]]
    img = np.stack(
        [
            np.stack([(xx * (3 + i) + yy * 2) % 256, (yy * (5 + i)) % 256, np.full(hw, 20 * i % 256)], -1)
            for i in range(n)
        ]
    ).astype(np.float32)
    img += rng.uniform(0, 20, img.shape).astype(np.float32)
    data = root.require_group("data")
    write_array(data, "img", np.clip(img, 0, 255), chunks=(4, *hw, 3))
    write_array(data, "state", rng.normal(size=(n, 5)).astype(np.float32), chunks=(n, 5))
    write_array(data, "action", rng.normal(size=(n, 2)).astype(np.float32), chunks=(n, 2))
    write_array(
        root.require_group("meta"), "episode_ends", np.cumsum(episodes).astype(np.int64), chunks=(len(episodes),)
    )
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two generated sam2_tiny checkpoints (A, and B with one tensor changed)."""
    from dp_sam2 import build_sam2

    torch.manual_seed(1)
    model = build_sam2("sam2_tiny", device="cpu", apply_postprocessing=False)
    state = {k: v.half() for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("ckpts")
    a = folder / "a" / "sam2_hiera_tiny.pt"
    b = folder / "b" / "sam2_hiera_tiny.pt"
    a.parent.mkdir(), b.parent.mkdir()
    torch.save({"model": state}, a)
    state["no_mem_embed"] = state["no_mem_embed"] + 1
    torch.save({"model": state}, b)
    return a, b


@pytest.fixture(scope="module")
def cached(tmp_path_factory, ckpts):
    """A replay buffer and its complete cache (inside the zarr), batch size 5."""
    path = write_replay(tmp_path_factory.mktemp("replay") / "replay.zarr")
    res = C.cache_features(path, "sam2_tiny", str(ckpts[0]), SIZE, batch_size=5, progress=False)
    return path, res


def _encoder(ckpt, size=SIZE, input_range=(-1, 1), **kw):
    from dp_sam2 import SAM2ObsEncoder

    meta = {"obs": {"img": {"shape": [3, 40, 48], "type": "rgb"}}}
    return SAM2ObsEncoder(
        meta,
        model_cfg="sam2_tiny",
        checkpoint=str(ckpt),
        image_size=size,
        pooling="mean",
        input_range=list(input_range),
        **kw,
    ).eval()


def _features(store, res) -> np.ndarray:
    return np.asarray(zarr.open_group(str(store), mode="r")[res.group]["features"]["img"][:])


@pytest.mark.slow
def test_cache_equals_live_encoder(cached, ckpts):
    path, res = cached
    assert res.complete and res.computed == sum(EPISODES) and res.key.checkpoint_sha256 == C.file_sha256(ckpts[0])
    arr = zarr.open_group(str(path), mode="r")[res.group]["features"]["img"]
    assert arr.dtype == np.float16 and arr.shape == (16, 256, 4, 4) and arr.chunks == (1, 256, 4, 4)
    frames = zarr.open_group(str(path), mode="r")["data"]["img"][:]
    with torch.no_grad():
        live = _encoder(ckpts[0]).encode_images(C.to_model_input(frames), "img")
    cached_feats = torch.from_numpy(_features(path, res)).float()
    assert rel_err(cached_feats, live) <= 1e-3  # float16 storage
    assert torch.equal(cached_feats, live.half().float()) or rel_err(cached_feats, live.half().float()) <= 1e-3
    handle = C.open_cache(path, res.key, n_frames=16)
    assert handle.keys == ("img",) and handle.feature_shape == (256, 4, 4)
    # a centre crop is part of the key and of the computation
    crop = C.cache_features(path, "sam2_tiny", str(ckpts[0]), SIZE, crop_shape=(32, 32), batch_size=16, progress=False)
    with torch.no_grad():
        live_crop = _encoder(ckpts[0], crop_shape=[32, 32]).encode_images(C.to_model_input(frames), "img")
    assert crop.group.endswith("-c32x32")
    assert rel_err(torch.from_numpy(_features(path, crop)).float(), live_crop) <= 1e-3


def assert_zarr2_layout(path: Path) -> None:
    """Every group and array under ``path`` is zarr format 2 (.zgroup / .zarray), none is v3 (zarr.json)."""
    path = Path(path)
    assert (path / ".zgroup").is_file(), f"{path} is not a zarr format 2 group"
    v3 = sorted(str(p.relative_to(path)) for p in path.rglob("zarr.json"))
    assert not v3, f"zarr v3 metadata (DP's zarr 2.x cannot read it): {v3}"


ZARR2_READ = """
import json, sys
import numpy as np, zarr
assert zarr.__version__.startswith("2."), zarr.__version__
root = zarr.open_group(sys.argv[1], mode="r")
group = root[sys.argv[2]]
print(json.dumps({
    "zarr": zarr.__version__,
    "img_sum": float(np.asarray(root["data"]["img"][:], dtype=np.float64).sum()),
    "episode_ends": root["meta"]["episode_ends"][:].tolist(),
    "features_sum": float(np.asarray(group["features"]["img"][:], dtype=np.float64).sum()),
    "done": bool(np.all(group["done"]["img"][:])),
    "complete": bool(group.attrs["complete"]),
}))
"""


def zarr2_python_path() -> str | None:
    """A folder that holds zarr 2.x (and numcodecs) for a subprocess: ``$DP_SAM2_TEST_ZARR2`` (e.g. made with
    ``pip install --target /tmp/zarr2 "zarr<3" "numcodecs<0.16"``), else ``None``."""
    folder = os.environ.get("DP_SAM2_TEST_ZARR2", "").strip()
    return folder if folder and (Path(folder) / "zarr").is_dir() else None


def test_replay_and_cache_open_with_zarr_2(cached, tmp_path):
    """What dp_sam2 writes (the replay buffer helpers, the cache) is zarr format 2 with numcodecs
    compressors, so DP's zarr 2.x opens it also when zarr 3 is installed (issue 26)."""
    path, res = cached
    assert_zarr2_layout(path)  # the replay buffer and the cache inside it
    meta = json.loads((path / res.group / "features" / "img" / ".zarray").read_text())
    assert meta["zarr_format"] == 2 and meta["compressor"]["id"] == "blosc" and meta["dtype"] == "<f2"
    with pytest.warns(UserWarning, match="RANDOM weights"):
        out = C.cache_features(
            path, "sam2_tiny", None, SIZE, out=tmp_path / "own.zarr", progress=False, random_weights=True
        )
    assert_zarr2_layout(tmp_path / "own.zarr")  # a cache in its own store too
    root = zarr.open_group(str(path), mode="r")
    expected = {
        "img_sum": float(np.asarray(root["data"]["img"][:], dtype=np.float64).sum()),
        "episode_ends": root["meta"]["episode_ends"][:].tolist(),
        "features_sum": float(np.asarray(root[res.group]["features"]["img"][:], dtype=np.float64).sum()),
        "done": True,
        "complete": True,
    }
    if zarr.__version__.startswith("2."):
        site = None  # this process reads with zarr 2 itself
    else:
        site = zarr2_python_path()
        if site is None:
            pytest.skip('set DP_SAM2_TEST_ZARR2 to a folder with zarr<3 (pip install --target DIR "zarr<3")')
    env = dict(os.environ, PYTHONPATH=site) if site else dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-c", ZARR2_READ, str(path), res.group], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got.pop("zarr").startswith("2.")
    assert got == expected
    assert out.complete


def test_stale_cache_is_refused(cached, ckpts, tmp_path):
    path, res = cached
    key_b, _ = C.make_key("sam2_tiny", str(ckpts[1]), SIZE)
    with pytest.raises(ValueError, match="no SAM 2 feature cache .*stale for this config") as info:
        C.open_cache(path, key_b)
    assert C.file_sha256(ckpts[0])[:12] in str(info.value) and "dp-sam2 cache-features" in str(info.value)
    key_bf16, _ = C.make_key("sam2_tiny", str(ckpts[0]), SIZE, precision="bf16")
    with pytest.raises(
        ValueError, match="no SAM 2 feature cache for sam2_tiny-64px-[0-9a-f]{12}-bf16 .*precision fp32"
    ):
        C.open_cache(path, key_bf16)
    key_96, _ = C.make_key("sam2_tiny", str(ckpts[0]), 96)
    with pytest.raises(ValueError, match="image_size 64"):
        C.open_cache(path, key_96)
    with pytest.raises(ValueError, match="n_frames: cache has 16, wanted 17"):
        C.open_cache(path, res.key, n_frames=17)
    # writing a changed replay buffer into an existing cache of the same key is refused too
    other = write_replay(tmp_path / "other.zarr", episodes=(5, 7, 5))
    C.cache_features(other, "sam2_tiny", str(ckpts[0]), SIZE, out=tmp_path / "cache.zarr", progress=False)
    with pytest.raises(ValueError, match="stale SAM 2 feature cache .*n_frames.*--overwrite"):
        C.cache_features(path, "sam2_tiny", str(ckpts[0]), SIZE, out=tmp_path / "cache.zarr", progress=False)


@pytest.mark.slow
def test_resume_after_interruption(cached, ckpts, tmp_path, monkeypatch):
    path, res = cached
    from dp_sam2.encoders.obs.encoder import SAM2ObsEncoder

    real = SAM2ObsEncoder.encode_images
    calls = []

    def flaky(self, images, key=None):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, images, key)

    monkeypatch.setattr(SAM2ObsEncoder, "encode_images", flaky)
    out = tmp_path / "resumed.zarr"
    with pytest.raises(KeyboardInterrupt):
        C.cache_features(path, "sam2_tiny", str(ckpts[0]), SIZE, out=out, batch_size=5, progress=False)
    group = zarr.open_group(str(out), mode="r")[res.group]
    assert int(np.sum(group["done"]["img"][:])) == 10 and not group.attrs["complete"]
    with pytest.raises(ValueError, match="incomplete"):
        C.open_cache(out, res.key)
    monkeypatch.setattr(SAM2ObsEncoder, "encode_images", real)
    again = C.cache_features(path, "sam2_tiny", str(ckpts[0]), SIZE, out=out, batch_size=5, progress=False)
    assert again.complete and again.computed == 6
    np.testing.assert_array_equal(_features(out, again), _features(path, res))


@pytest.mark.slow
def test_two_rank_torchrun_matches_one_process(cached, ckpts, tmp_path):
    path, res = cached
    out = tmp_path / "two.zarr"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "dp_sam2.tools.cli",
        "cache-features",
        "--zarr",
        str(path),
        "--out",
        str(out),
        "--obs-encoder",
        "sam2_tiny",
        "--checkpoint",
        str(ckpts[0]),
        "--image-size",
        str(SIZE),
        "--batch-size",
        "5",
        "--no-progress",
        "--device",
        "cpu",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 1: encoded 8 frames" in proc.stdout and "[rank 0 of 2]" in proc.stdout
    two = _features(out, res)
    one = _features(path, res)
    assert rel_err(torch.from_numpy(two).float(), torch.from_numpy(one).float()) <= 1e-3
    assert C.open_cache(out, res.key).n_frames == 16


def test_bad_inputs(tmp_path, cached, ckpts):
    path, _ = cached
    with pytest.raises(FileNotFoundError, match="replay buffer not found"):
        C.cache_features(tmp_path / "nope.zarr", "sam2_tiny", str(ckpts[0]), SIZE)
    with pytest.raises(ValueError, match="not an rgb array"):
        C.cache_features(path, "sam2_tiny", str(ckpts[0]), SIZE, keys=["state"])
    with pytest.raises(ValueError, match="batch_size"):
        C.cache_features(path, "sam2_tiny", str(ckpts[0]), SIZE, batch_size=0)
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(ValueError, match="meta/episode_ends"):
        C.cache_features(tmp_path / "empty.zarr", "sam2_tiny", str(ckpts[0]), SIZE)
    with pytest.raises(FileNotFoundError, match="dp-sam2 download sam2_tiny"):
        C.make_key("sam2_tiny", str(tmp_path / "missing.pt"), SIZE)


# --------------------------------------------------------------------------- a DP-shaped stand-in
FAKE_DP = {
    "diffusion_policy/dataset/base_dataset.py": """
        import torch
        class BaseImageDataset(torch.utils.data.Dataset):
            def get_validation_dataset(self): return BaseImageDataset()
            def get_normalizer(self, **kwargs): raise NotImplementedError()
            def get_all_actions(self): raise NotImplementedError()
            def __len__(self): return 0
            def __getitem__(self, idx): raise NotImplementedError()
    """,
    "diffusion_policy/common/normalize_util.py": """
        import numpy as np
        class Field:
            def __init__(self, scale, offset): self.scale, self.offset = np.asarray(scale), np.asarray(offset)
            def normalize(self, x): return x * self.scale + self.offset
        def get_image_range_normalizer(): return Field([2.0], [-1.0])
        def get_identity_normalizer_from_stat(stat):
            return Field(np.ones_like(stat["min"]), np.zeros_like(stat["min"]))
    """,
    "diffusion_policy/common/sampler.py": """
        import numpy as np
        class SequenceSampler:  # DP's semantics: rows (buffer_start, buffer_end, sample_start, sample_end)
            def __init__(self, episode_ends, sequence_length, pad_before=0, pad_after=0, episode_mask=None):
                self.sequence_length = sequence_length
                rows, start = [], 0
                mask = np.ones(len(episode_ends), bool) if episode_mask is None else episode_mask
                for i, end in enumerate(episode_ends):
                    length = end - start
                    if mask[i]:
                        for s in range(-min(pad_before, sequence_length - 1),
                                       length - sequence_length + min(pad_after, sequence_length - 1) + 1):
                            b0, b1 = max(s, 0) + start, min(s + sequence_length, length) + start
                            s0 = b0 - (s + start)
                            rows.append([b0, b1, s0, s0 + (b1 - b0)])
                    start = end
                self.indices = np.array(rows, dtype=np.int64).reshape(-1, 4)
            def __len__(self): return len(self.indices)
            def sample(self, arr, idx):
                b0, b1, s0, s1 = self.indices[idx]
                out = np.repeat(arr[b0:b0 + 1], self.sequence_length, 0)
                out[s0:s1] = arr[b0:b1]
                out[s1:] = arr[b1 - 1]
                return out
    """,
    "diffusion_policy/dataset/pusht_image_dataset.py": """
        import copy
        import numpy as np, torch, zarr
        from diffusion_policy.dataset.base_dataset import BaseImageDataset
        from diffusion_policy.common.sampler import SequenceSampler
        from diffusion_policy.common.normalize_util import get_image_range_normalizer, Field
        class Replay:
            def __init__(self, path):
                root = zarr.open_group(path, mode="r")
                self.data = {k: root["data"][k][:] for k in ("img", "state", "action")}
                self.episode_ends = root["meta"]["episode_ends"][:]
                self.n_steps = int(self.episode_ends[-1])
        class PushTImageDataset(BaseImageDataset):
            def __init__(self, zarr_path, horizon=1, pad_before=0, pad_after=0, seed=42, val_ratio=0.0,
                         max_train_episodes=None):
                self.replay_buffer = Replay(zarr_path)
                self.val_mask = np.zeros(len(self.replay_buffer.episode_ends), bool)
                if val_ratio > 0 and len(self.val_mask) > 1:  # DP keeps at least one training episode
                    self.val_mask[-1] = True
                self.args = (horizon, pad_before, pad_after)
                self.sampler = SequenceSampler(self.replay_buffer.episode_ends, *self.args, episode_mask=~self.val_mask)
            def get_validation_dataset(self):
                val = copy.copy(self)
                val.sampler = SequenceSampler(self.replay_buffer.episode_ends, *self.args, episode_mask=self.val_mask)
                return val
            def get_normalizer(self, **kwargs):
                return {"action": Field([1.0], [0.0]), "agent_pos": Field([1.0], [0.0]), "image": """
    """get_image_range_normalizer()}
            def get_all_actions(self): return torch.from_numpy(self.replay_buffer.data["action"])
            def __len__(self): return len(self.sampler)
            def __getitem__(self, idx):
                d = {k: self.sampler.sample(v, idx) for k, v in self.replay_buffer.data.items()}
                return {"obs": {"image": torch.from_numpy(np.moveaxis(d["img"], -1, 1) / 255),
                                "agent_pos": torch.from_numpy(d["state"][:, :2])},
                        "action": torch.from_numpy(d["action"])}
    """,
}


@pytest.fixture
def fake_dp(tmp_path, monkeypatch):
    root = tmp_path / "fake_dp"
    for rel, text in FAKE_DP.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [m for m in sys.modules if m == "diffusion_policy" or m.startswith("diffusion_policy.")]:
        del sys.modules[name]


SHAPE_META = {
    "obs": {"image": {"shape": [3, 40, 48], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}},
    "action": {"shape": [2]},
}


def test_dataset_wrapper_serves_cached_features(fake_dp, cached, ckpts):
    from diffusion_policy.dataset.base_dataset import BaseImageDataset
    from diffusion_policy.dataset.pusht_image_dataset import PushTImageDataset

    path, res = cached
    inner = PushTImageDataset(str(path), horizon=6, pad_before=1, pad_after=5, val_ratio=0.3)
    ds = C.CachedFeatureDataset(
        inner,
        cache_path=str(path),
        model_cfg="sam2_tiny",
        checkpoint=str(ckpts[0]),
        image_size=SIZE,
        input_range=[0, 1],
        shape_meta=SHAPE_META,
        n_obs_steps=2,
    )
    assert isinstance(ds, BaseImageDataset) and len(ds) == len(inner)
    assert ds.replay_buffer is inner.replay_buffer  # other attributes come from the wrapped dataset
    feats = _features(path, res)
    for idx in range(len(ds)):
        got, ref = ds[idx], inner[idx]
        b0, b1, s0, s1 = inner.sampler.indices[idx]
        want = [b0 + min(max(t - s0, 0), b1 - b0 - 1) for t in range(2)]  # padding repeats the edge frame
        assert got["obs"]["image"].dtype == torch.float16 and tuple(got["obs"]["image"].shape) == (2, 256, 4, 4)
        np.testing.assert_array_equal(got["obs"]["image"].numpy(), feats[want])
        assert torch.equal(got["obs"]["agent_pos"], ref["obs"]["agent_pos"])
        assert torch.equal(got["action"], ref["action"])
    assert ds.frame_indices(0)[0] == ds.frame_indices(0)[1] == 0  # pad_before=1: the first frame twice
    norm = ds.get_normalizer()
    assert float(norm["image"].scale[0]) == 1.0 and float(norm["image"].offset[0]) == 0.0
    assert float(norm["agent_pos"].scale[0]) == 1.0
    val = ds.get_validation_dataset()
    assert 0 < len(val) < len(ds) + len(val) and isinstance(val, BaseImageDataset)
    assert torch.equal(ds.get_all_actions(), inner.get_all_actions())
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[3]["obs"]["image"].numpy(), ds[3]["obs"]["image"].numpy())
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert tuple(batch["obs"]["image"].shape) == (4, 2, 256, 4, 4)

    # the obs encoder takes the served features in place of the images: same output
    from dp_sam2 import SAM2ObsEncoder

    enc = SAM2ObsEncoder(
        SHAPE_META, model_cfg="sam2_tiny", checkpoint=str(ckpts[0]), image_size=SIZE, input_range=[0, 1]
    ).eval()
    sample, images = ds[5], inner[5]
    with torch.no_grad():
        from_cache = enc({"image": sample["obs"]["image"], "agent_pos": images["obs"]["agent_pos"][:2]})
        live = enc({"image": images["obs"]["image"][:2].float(), "agent_pos": images["obs"]["agent_pos"][:2]})
    assert rel_err(from_cache, live) <= 1e-2

    with pytest.raises(ValueError, match="input_range: \\[0, 1\\]"):
        C.CachedFeatureDataset(
            inner,
            cache_path=str(path),
            model_cfg="sam2_tiny",
            checkpoint=str(ckpts[0]),
            image_size=SIZE,
            input_range=[-1, 1],
        )
    with pytest.raises(ValueError, match="stale for this config"):
        C.CachedFeatureDataset(
            inner,
            cache_path=str(path),
            model_cfg="sam2_tiny",
            checkpoint=str(ckpts[1]),
            image_size=SIZE,
            input_range=[0, 1],
        )


DP_SHAPED_YAML = """
defaults:
  - _self_
name: train_diffusion_unet_image
horizon: 6
n_obs_steps: 2
shape_meta:
  obs:
    image: {shape: [3, 40, 48], type: rgb}
    agent_pos: {shape: [2], type: low_dim}
  action: {shape: [2]}
task:
  dataset:
    _target_: dp_sam2.cache.CachedFeatureDataset
    dataset:
      _target_: diffusion_policy.dataset.pusht_image_dataset.PushTImageDataset
      zarr_path: ZARR
      horizon: ${horizon}
      pad_before: ${eval:'${n_obs_steps}-1'}
      pad_after: 7
    cache_path: ZARR
    model_cfg: ${policy.obs_encoder.model_cfg}
    checkpoint: ${policy.obs_encoder.checkpoint}
    image_size: ${policy.obs_encoder.image_size}
    crop_shape: ${policy.obs_encoder.crop_shape}
    resize_shape: ${policy.obs_encoder.resize_shape}
    input_range: ${policy.obs_encoder.input_range}
    precision: ${policy.obs_encoder.precision}
    shape_meta: ${shape_meta}
    n_obs_steps: ${n_obs_steps}
policy:
  obs_encoder:
    crop_shape: null
    input_range: [0, 1]
"""


def test_dataset_wrapper_in_dp_shaped_hydra_config(fake_dp, cached, ckpts, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path, res = cached
    cfg_dir = tmp_path / "config"
    cfg_dir.mkdir()
    (cfg_dir / "train_cached.yaml").write_text(DP_SHAPED_YAML.replace("ZARR", str(path)))
    OmegaConf.register_new_resolver("eval", eval, replace=True)  # as DP's train.py does
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(cfg_dir), version_base=None):
            overrides = [
                "+obs_encoder@policy.obs_encoder=sam2_tiny",
                f"policy.obs_encoder.checkpoint={ckpts[0]}",
                "policy.obs_encoder.input_range=[0,1]",
                f"policy.obs_encoder.image_size={SIZE}",
            ]
            cfg = compose("train_cached", overrides=overrides)
            stale = compose("train_cached", overrides=overrides[:3] + ["policy.obs_encoder.image_size=96"])
            # the group file (merged after _self_) sets input_range [-1, 1]: refused with a clear message
            default_range = compose("train_cached", overrides=overrides[:2] + overrides[3:])
    finally:
        GlobalHydra.instance().clear()
    assert cfg.policy.obs_encoder._target_ == "dp_sam2.SAM2ObsEncoder"
    ds = instantiate(cfg.task.dataset)
    from diffusion_policy.dataset.base_dataset import BaseImageDataset

    assert isinstance(ds, BaseImageDataset) and tuple(ds[0]["obs"]["image"].shape) == (2, 256, 4, 4)
    np.testing.assert_array_equal(ds[0]["obs"]["image"].numpy(), _features(path, res)[[0, 0]])
    with pytest.raises(Exception, match="no SAM 2 feature cache for sam2_tiny-96px"):
        instantiate(stale.task.dataset)
    with pytest.raises(Exception, match="set policy.obs_encoder.input_range: \\[0, 1\\]"):
        instantiate(default_range.task.dataset)


def test_store_helpers_write_format_2_and_keep_an_older_v3_store_working(tmp_path):
    """New groups are zarr format 2; a v3 store made by dp_sam2 0.2.x (zarr 3's default) is opened as it is
    and extended in its own format, so an older cache keeps working with zarr 3."""
    from dp_sam2.cache import store

    new = store.open_group(tmp_path / "new.zarr", "a")  # missing: created, format 2
    store.write_array(store.require_group(new, "data"), "x", np.arange(6, dtype=np.float32).reshape(3, 2), (1, 2))
    assert_zarr2_layout(tmp_path / "new.zarr")
    assert store.member_names(store.open_group(tmp_path / "new.zarr", "r")["data"]) == ["x"]
    with pytest.raises(FileNotFoundError, match="no zarr group at"):
        store.open_group(tmp_path / "missing.zarr", "r")
    with pytest.raises(ValueError, match="mode must be one of"):
        store.open_group(tmp_path / "new.zarr", "x")
    if store.zarr_major() < 3:
        return
    zarr.open_group(str(tmp_path / "old.zarr"), mode="w").require_group("data")  # zarr 3's default: v3
    old = store.open_group(tmp_path / "old.zarr", "a")
    group = store.require_group(old, "dp_sam2_features")
    store.create_array(group, "f", (2, 3), (1, 3), "float16", 0)[...] = 1
    assert store.group_format(old) == 3 and (tmp_path / "old.zarr" / "dp_sam2_features" / "f" / "zarr.json").is_file()
    assert store.has_member(old, "dp_sam2_features") and not store.has_member(old, "nothing")
    store.delete_member(old, "dp_sam2_features")
    assert store.member_names(store.open_group(tmp_path / "old.zarr", "r")) == ["data"]
