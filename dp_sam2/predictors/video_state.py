"""State of a video tracking session: frames, per-object prompts and outputs.

``InferenceState`` is what :meth:`SAM2VideoPredictor.init_state` returns. It is a mapping with
the official keys that user code reads (``"video_height"``, ``"video_width"``, ``"num_frames"``,
``"obj_ids"``, ``"images"``, ``"device"``, ``"output_dict_per_obj"`` ...), backed by small
dataclasses instead of nested string-keyed dicts.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field, fields

import torch


class _ItemAccess:
    """``obj["name"]`` reads/writes the attribute ``name`` (official dict-style access)."""

    def __getitem__(self, key: str):
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value) -> None:
        if key not in self._keys():
            raise KeyError(key)
        setattr(self, key, value)

    def get(self, key: str, default=None):
        return getattr(self, key) if key in self._keys() else default

    def _keys(self):
        return {f.name for f in fields(self)}


@dataclass
class FrameOutput(_ItemAccess):
    """What is kept of one object's prediction on one frame."""

    maskmem_features: torch.Tensor | None  # [1, mem_dim, h, w] bfloat16 (None until encoded)
    maskmem_pos_enc: list | None  # shared constant, see ``InferenceState.constants``
    pred_masks: torch.Tensor  # [1, 1, 4h, 4w] low-res logits
    obj_ptr: torch.Tensor  # [1, hidden_dim]
    object_score_logits: torch.Tensor  # [1, 1]


@dataclass
class MemoryBank(_ItemAccess):
    """One object's outputs: conditioning (prompted) frames and tracked frames."""

    cond_frame_outputs: dict = field(default_factory=dict)
    non_cond_frame_outputs: dict = field(default_factory=dict)

    def find(self, frame_idx: int):
        out = self.cond_frame_outputs.get(frame_idx)
        return out if out is not None else self.non_cond_frame_outputs.get(frame_idx)

    def bucket(self, is_cond: bool) -> dict:
        return self.cond_frame_outputs if is_cond else self.non_cond_frame_outputs

    def clear(self) -> None:
        self.cond_frame_outputs.clear()
        self.non_cond_frame_outputs.clear()


@dataclass
class ObjectTrack:
    """Prompts and outputs of one object id."""

    obj_id: object
    point_inputs: dict = field(default_factory=dict)  # frame -> {"point_coords", "point_labels"}
    mask_inputs: dict = field(default_factory=dict)  # frame -> [1, 1, S, S] float mask
    outputs: MemoryBank = field(default_factory=MemoryBank)
    temp_outputs: MemoryBank = field(default_factory=MemoryBank)  # prompted, not yet in memory
    frames_tracked: dict = field(default_factory=dict)  # frame -> tracked in reverse?

    def clear(self) -> None:
        self.point_inputs.clear()
        self.mask_inputs.clear()
        self.outputs.clear()
        self.temp_outputs.clear()
        self.frames_tracked.clear()


class StreamFrames:
    """Frames of a stream, appended one at a time; old ones can be released."""

    def __init__(self) -> None:
        self._frames: dict[int, torch.Tensor] = {}
        self._count = 0

    def append(self, image: torch.Tensor) -> int:
        self._frames[self._count] = image
        self._count += 1
        return self._count - 1

    def release_before(self, frame_idx: int) -> None:
        for t in [t for t in self._frames if t < frame_idx]:
            del self._frames[t]

    def held(self) -> int:
        return len(self._frames)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, frame_idx: int) -> torch.Tensor:
        if frame_idx in self._frames:
            return self._frames[frame_idx]
        if 0 <= frame_idx < self._count:
            raise ValueError(
                f"frame {frame_idx} was released from the stream (frames held: "
                f"{sorted(self._frames)}); init_state(release_old_frames=False) keeps all"
            )
        raise IndexError(f"frame {frame_idx} is not in the stream ({self._count} frames)")


@dataclass(eq=False)
class InferenceState(MutableMapping):
    """A tracking session. Reads like the official ``inference_state`` dict."""

    images: object  # [T, 3, S, S] tensor, or StreamFrames
    video_height: int | None
    video_width: int | None
    device: torch.device
    storage_device: torch.device
    offload_video_to_cpu: bool = False
    offload_state_to_cpu: bool = False
    streaming: bool = False
    release_old_frames: bool = False
    objects: list = field(default_factory=list)  # ObjectTrack, index = model-side obj_idx
    cached_features: dict = field(default_factory=dict)  # frame -> (image, backbone_out)
    constants: dict = field(default_factory=dict)  # maskmem_pos_enc, same for every frame

    # ---------------------------------------------------------------- official keys
    @property
    def num_frames(self) -> int:
        return len(self.images)

    @property
    def obj_ids(self) -> list:
        return [o.obj_id for o in self.objects]

    @property
    def obj_id_to_idx(self) -> dict:
        return {o.obj_id: i for i, o in enumerate(self.objects)}

    @property
    def obj_idx_to_id(self) -> dict:
        return dict(enumerate(self.obj_ids))

    def _per_obj(self, attr: str) -> dict:
        return {i: getattr(o, attr) for i, o in enumerate(self.objects)}

    _DERIVED = {
        "num_frames": lambda s: s.num_frames,
        "obj_ids": lambda s: s.obj_ids,
        "obj_id_to_idx": lambda s: s.obj_id_to_idx,
        "obj_idx_to_id": lambda s: s.obj_idx_to_id,
        "point_inputs_per_obj": lambda s: s._per_obj("point_inputs"),
        "mask_inputs_per_obj": lambda s: s._per_obj("mask_inputs"),
        "output_dict_per_obj": lambda s: s._per_obj("outputs"),
        "temp_output_dict_per_obj": lambda s: s._per_obj("temp_outputs"),
        "frames_tracked_per_obj": lambda s: {
            i: {t: {"reverse": r} for t, r in o.frames_tracked.items()} for i, o in enumerate(s.objects)
        },
    }

    def _field_names(self) -> list[str]:
        return [f.name for f in fields(self)]

    def __getitem__(self, key: str):
        if key in self._DERIVED:
            return self._DERIVED[key](self)
        if key in self._field_names():
            return getattr(self, key)
        raise KeyError(f"inference_state has no key {key!r}; keys: {sorted(self)}")

    def __setitem__(self, key: str, value) -> None:
        if key not in self._field_names():
            raise KeyError(f"inference_state key {key!r} cannot be set; settable keys: {self._field_names()}")
        setattr(self, key, value)

    def __delitem__(self, key: str) -> None:
        raise TypeError("inference_state keys cannot be deleted; use reset_state()")

    def __iter__(self):
        return iter(self._field_names() + list(self._DERIVED))

    def __len__(self) -> int:
        return len(self._field_names()) + len(self._DERIVED)
