"""Diffusion Policy datasets over a MetaWorld demo buffer (``task.dataset`` of ``task=metaworld`` and
``task=metaworld_lowdim``).

Behaviour only: :mod:`dp_sam2.metaworld` combines these mixins with DP's ``BaseImageDataset`` /
``BaseLowdimDataset`` on first use (``dp_sam2.dp_classes.dp_subclass``). Sampling is DP's own
``SequenceSampler`` with ``get_val_mask`` / ``downsample_mask`` (``horizon``, ``pad_before``,
``pad_after``, ``val_ratio``, ``max_train_episodes`` mean what they mean in DP's Push-T datasets);
the buffer is read with our own reader so a missing or misshapen key is a clear error.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from dp_sam2.metaworld.buffer import check_buffer_matches, read_buffer


class _InMemoryBuffer(dict):
    """What DP's ``SequenceSampler`` reads of a ``ReplayBuffer``: keys, arrays, ``episode_ends``."""

    def __init__(self, data: dict, episode_ends: np.ndarray):
        super().__init__(data)
        self.episode_ends = episode_ends

    @property
    def n_episodes(self) -> int:
        return len(self.episode_ends)


class _MetaWorldDataset:
    """Shared by the image and low-dim datasets: reading, checks, train/validation split, sampling."""

    _keys: tuple[str, ...] = ()

    def __init__(
        self,
        zarr_path,
        horizon: int = 1,
        pad_before: int = 0,
        pad_after: int = 0,
        seed: int = 42,
        val_ratio: float = 0.0,
        max_train_episodes: int | None = None,
        env_name: str | None = None,
        image_size: int | None = None,
        camera: str | None = None,
    ):
        """zarr_path: a buffer written by ``dp-sam2 metaworld-demos``.
        env_name, image_size, camera: the task file's settings, checked against the buffer's (a
            mismatch is a ``ValueError`` naming both); ``None`` skips that check."""
        super().__init__()
        from diffusion_policy.common.sampler import downsample_mask, get_val_mask

        data, ends, attrs = read_buffer(zarr_path, keys=self._keys)
        check_buffer_matches(zarr_path, attrs, env_name=env_name, image_size=image_size, camera=camera)
        self.zarr_path = str(zarr_path)
        self.replay_buffer = _InMemoryBuffer(data, ends)
        val_mask = get_val_mask(n_episodes=len(ends), val_ratio=val_ratio, seed=seed)
        self.train_mask = downsample_mask(mask=~val_mask, max_n=max_train_episodes, seed=seed)
        self.horizon, self.pad_before, self.pad_after = horizon, pad_before, pad_after
        self.sampler = self._sampler(self.train_mask)

    def _sampler(self, mask):
        from diffusion_policy.common.sampler import SequenceSampler

        return SequenceSampler(
            replay_buffer=self.replay_buffer,
            sequence_length=self.horizon,
            pad_before=self.pad_before,
            pad_after=self.pad_after,
            episode_mask=mask,
        )

    def get_validation_dataset(self):
        val_set = copy.copy(self)
        val_set.train_mask = ~self.train_mask
        val_set.sampler = self._sampler(val_set.train_mask)
        return val_set

    def get_all_actions(self) -> torch.Tensor:
        return torch.from_numpy(self.replay_buffer["action"])

    def __len__(self) -> int:
        return len(self.sampler)

    def _fit_normalizer(self, data: dict, mode: str, **kwargs):
        from diffusion_policy.model.common.normalizer import LinearNormalizer

        normalizer = LinearNormalizer()
        normalizer.fit(data=data, last_n_dims=1, mode=mode, **kwargs)
        return normalizer

    def __getitem__(self, idx: int):
        sample = self.sampler.sample_sequence(idx)
        data = self._sample_to_data(sample)
        return {
            k: ({kk: torch.from_numpy(vv) for kk, vv in v.items()} if isinstance(v, dict) else torch.from_numpy(v))
            for k, v in data.items()
        }


class MetaWorldImageDatasetMixin(_MetaWorldDataset):
    """Samples ``{'obs': {'image': (T, 3, S, S) float32 in [0, 1], 'agent_pos': (T, 4)}, 'action': (T, 4)}``."""

    _keys = ("img", "agent_pos", "action")

    def get_normalizer(self, mode: str = "limits", **kwargs):
        from diffusion_policy.common.normalize_util import get_image_range_normalizer

        data = {"action": self.replay_buffer["action"], "agent_pos": self.replay_buffer["agent_pos"]}
        normalizer = self._fit_normalizer(data, mode, **kwargs)
        normalizer["image"] = get_image_range_normalizer()
        return normalizer

    def _sample_to_data(self, sample):
        return {
            "obs": {
                "image": np.moveaxis(sample["img"], -1, 1).astype(np.float32) / 255.0,
                "agent_pos": sample["agent_pos"].astype(np.float32),
            },
            "action": sample["action"].astype(np.float32),
        }


class MetaWorldLowdimDatasetMixin(_MetaWorldDataset):
    """Samples ``{'obs': (T, 39) float32 (the full state), 'action': (T, 4)}``."""

    _keys = ("state", "action")

    def get_normalizer(self, mode: str = "limits", **kwargs):
        data = {"obs": self.replay_buffer["state"], "action": self.replay_buffer["action"]}
        return self._fit_normalizer(data, mode, **kwargs)

    def _sample_to_data(self, sample):
        return {"obs": sample["state"].astype(np.float32), "action": sample["action"].astype(np.float32)}
