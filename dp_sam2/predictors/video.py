"""SAM2VideoPredictor: prompt objects on some frames of a video and track them through it.

The official API (``init_state``, ``add_new_points_or_box``, ``add_new_mask``, ``propagate_in_video``,
``clear_all_prompts_in_frame``, ``remove_object``, ``reset_state``) and outputs, plus a streaming mode::

    state = predictor.init_state()             # no video: frames arrive one at a time
    t = predictor.add_frame(state, first_rgb)  # HxWx3 uint8
    predictor.add_new_points_or_box(state, t, obj_id=1, points=[[x, y]], labels=[1])
    t, obj_ids, masks = predictor.track_frame(state)  # the prompted frame; then track_frame(state, rgb)

``release_old_frames=True`` (streaming default) drops frames, features and outputs older than the memory window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dp_sam2.encoders.sam2.model import SAM2Base
from dp_sam2.encoders.sam2.precision import check_precision

from .video_edit import VideoEditOps
from .video_frames import VideoFrameOps
from .video_io import load_video_frames, prepare_frame
from .video_state import FrameOutput, InferenceState, ObjectTrack, StreamFrames


class VideoPromptError(ValueError, RuntimeError):
    """A prompt or object id the session cannot use (a RuntimeError too, as the official raises)."""


class SAM2VideoPredictor(VideoEditOps, VideoFrameOps, SAM2Base):
    def __init__(
        self,
        fill_hole_area: int = 0,
        non_overlap_masks: bool = False,
        clear_non_cond_mem_around_input: bool = False,
        add_all_frames_to_correct_as_cond: bool = False,
        precision: str = "fp32",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        # "bf16": each frame's image encoder (about half of the time per frame) under bfloat16
        # autocast, its features kept in fp32; fast on GPUs and CPUs with bf16 matmuls only
        self.precision = check_precision(precision)
        self.fill_hole_area = fill_hole_area
        self.non_overlap_masks = non_overlap_masks
        self.clear_non_cond_mem_around_input = clear_non_cond_mem_around_input
        self.add_all_frames_to_correct_as_cond = add_all_frames_to_correct_as_cond
        self.show_progress = True  # tqdm bars on frame loading and propagation

    @classmethod
    def from_pretrained(cls, model_id: str, **kwargs) -> SAM2VideoPredictor:
        """Hub id, short name or config name; checkpoint found or downloaded (see :mod:`.pretrained`)."""
        from .pretrained import build_pretrained

        return build_pretrained(model_id, video=True, **kwargs)

    def _progress(self, progress: bool | None) -> bool:
        return self.show_progress if progress is None else bool(progress)

    # ================================================================== sessions
    @torch.inference_mode()
    def init_state(
        self,
        video_path=None,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
        async_loading_frames: bool = False,
        *,
        progress: bool | None = None,
        release_old_frames: bool | None = None,
    ) -> InferenceState:
        """Start a session on ``video_path`` (a folder of JPEG frames, a video file, a list of
        ``HxWx3`` uint8 arrays or a ``Tx3xHxW`` tensor), or a stream when it is ``None``.

        ``async_loading_frames`` is accepted for compatibility; frames are loaded up front.
        ``release_old_frames`` (streams only, default True) drops what the memory no longer needs."""
        device = self.device
        storage = torch.device("cpu") if offload_state_to_cpu else device
        if video_path is None:
            state = InferenceState(
                StreamFrames(),
                None,
                None,
                device,
                storage,
                offload_video_to_cpu,
                offload_state_to_cpu,
                streaming=True,
                release_old_frames=True if release_old_frames is None else release_old_frames,
            )
            return state
        if release_old_frames:
            raise ValueError(
                "release_old_frames is for streams (init_state(video_path=None)); a whole video keeps its frames"
            )
        video = load_video_frames(
            video_path, self.image_size, offload_video_to_cpu, device, progress=self._progress(progress)
        )
        state = InferenceState(
            video.images,
            video.video_height,
            video.video_width,
            device,
            storage,
            offload_video_to_cpu,
            offload_state_to_cpu,
        )
        self._get_image_feature(state, frame_idx=0, batch_size=1)  # warm up and cache frame 0
        return state

    @torch.inference_mode()
    def add_frame(self, inference_state: InferenceState, frame) -> int:
        """Append a frame (``HxWx3`` uint8 array or ``3xHxW`` tensor) to a stream; returns its index."""
        state = inference_state
        if not state.streaming:
            raise ValueError("add_frame needs a stream: create it with init_state(video_path=None)")
        image, h, w = prepare_frame(frame, self.image_size, len(state.images))
        if state.video_height is None:
            state.video_height, state.video_width = h, w
        elif (h, w) != (state.video_height, state.video_width):
            raise ValueError(
                f"all frames must have the same size: the stream is {state.video_height}x"
                f"{state.video_width} (HxW), frame {len(state.images)} is {h}x{w}"
            )
        if not state.offload_video_to_cpu:
            image = image.to(state.device)
        return state.images.append(image)

    @torch.inference_mode()
    def track_frame(self, inference_state: InferenceState, frame=None, progress: bool | None = False):
        """Streaming step: append ``frame`` (if given) and track every object on the newest frame.

        Returns ``(frame_idx, obj_ids, video_res_masks)`` like one step of ``propagate_in_video``."""
        state = inference_state
        if frame is not None:
            self.add_frame(state, frame)
        if state.num_frames == 0:
            raise ValueError("the stream has no frames yet: pass a frame or call add_frame first")
        newest = state.num_frames - 1
        result = next(
            iter(self.propagate_in_video(state, start_frame_idx=newest, max_frame_num_to_track=0, progress=progress))
        )
        if state.release_old_frames:
            self._release_old_frames(state, newest)
        return result

    def memory_window(self) -> int:
        """How many recent frames the memory can read (spatial memories and object pointers)."""
        stride = self.memory_temporal_stride_for_eval
        return max(self.num_maskmem * stride, self.max_obj_ptrs_in_encoder) + 1

    def _release_old_frames(self, state: InferenceState, newest: int) -> None:
        state.images.release_before(newest)
        cutoff = newest - self.memory_window()
        for obj in state.objects:
            for bucket in (obj.outputs.non_cond_frame_outputs, obj.frames_tracked):
                for t in [t for t in bucket if t < cutoff]:
                    del bucket[t]
        state.cached_features = {t: v for t, v in state.cached_features.items() if t >= newest}

    def _memory_num_frames(self, state: InferenceState) -> int:
        """A stream has no known length: treat it as long (as a whole video of >= 16 frames)."""
        if state.streaming:
            return max(state.num_frames, self.max_obj_ptrs_in_encoder)
        return state.num_frames

    # ================================================================== objects and frames
    def _check_frame_idx(self, state: InferenceState, frame_idx) -> int:
        integral_tensor = (
            isinstance(frame_idx, torch.Tensor) and frame_idx.numel() == 1 and not frame_idx.is_floating_point()
        )
        if integral_tensor or (hasattr(frame_idx, "__index__") and not isinstance(frame_idx, bool)):
            frame_idx = int(frame_idx)  # ints, numpy ints, one-element integer tensors
        else:
            raise TypeError(f"frame_idx must be an int, got {type(frame_idx).__name__}")
        n = state.num_frames
        if not 0 <= frame_idx < n:
            raise ValueError(f"frame_idx {frame_idx} is outside the video, which has {n} frames (0..{n - 1})")
        return frame_idx

    def _obj_id_to_idx(self, inference_state: InferenceState, obj_id) -> int:
        """Model-side index of ``obj_id``; a new id gets the next slot (also after tracking started)."""
        ids = inference_state.obj_ids
        if obj_id in ids:
            return ids.index(obj_id)
        try:
            hash(obj_id)
        except TypeError:
            raise TypeError(f"obj_id must be hashable (an int or str), got {type(obj_id).__name__}") from None
        inference_state.objects.append(ObjectTrack(obj_id))
        return len(ids)

    def _existing_obj_idx(self, state: InferenceState, obj_id) -> int:
        ids = state.obj_ids
        if obj_id not in ids:
            raise VideoPromptError(f"unknown object id {obj_id!r}; the session's object ids are {ids}")
        return ids.index(obj_id)

    def _obj_idx_to_id(self, inference_state: InferenceState, obj_idx: int):
        return inference_state.objects[obj_idx].obj_id

    def _get_obj_num(self, inference_state: InferenceState) -> int:
        return len(inference_state.objects)

    # ================================================================== prompts
    @torch.inference_mode()
    def add_new_points_or_box(
        self,
        inference_state,
        frame_idx,
        obj_id,
        points=None,
        labels=None,
        clear_old_points=True,
        normalize_coords=True,
        box=None,
    ):
        """Add clicks (``points [N, 2]`` x,y with ``labels [N]``: 1 positive, 0 negative) and/or a
        ``box`` (x0, y0, x1, y1) for ``obj_id`` on a frame. Returns ``(frame_idx, obj_ids, masks)``
        with masks ``[num_objects, 1, video_height, video_width]`` logits."""
        state = inference_state
        frame_idx = self._check_frame_idx(state, frame_idx)
        coords, labels = self._prompt_points(state, points, labels, box, clear_old_points, normalize_coords)
        obj_idx = self._obj_id_to_idx(state, obj_id)
        obj = state.objects[obj_idx]
        old = obj.point_inputs.get(frame_idx) if not clear_old_points else None
        if old is not None:
            coords = torch.cat([old["point_coords"], coords], dim=1)
            labels = torch.cat([old["point_labels"], labels], dim=1)
        point_inputs = {"point_coords": coords, "point_labels": labels}
        obj.point_inputs[frame_idx] = point_inputs
        obj.mask_inputs.pop(frame_idx, None)
        return self._prompt_frame(state, obj_idx, frame_idx, point_inputs=point_inputs)

    def add_new_points(self, *args, **kwargs):
        """Deprecated official alias of :meth:`add_new_points_or_box`."""
        return self.add_new_points_or_box(*args, **kwargs)

    def _prompt_points(self, state, points, labels, box, clear_old_points, normalize_coords):
        """Points (and box corners, labels 2 and 3, first) in the model's input pixel frame, ``[1, N, 2]``."""
        if (points is None) != (labels is None):
            raise ValueError(
                "points and labels must be given together "
                f"(got points={'None' if points is None else 'given'}, "
                f"labels={'None' if labels is None else 'given'})"
            )
        if points is None and box is None:
            raise ValueError("give points with labels, a box, or both")
        points = torch.zeros(0, 2) if points is None else torch.as_tensor(points, dtype=torch.float32)
        labels = torch.zeros(0, dtype=torch.int32) if labels is None else torch.as_tensor(labels, dtype=torch.int32)
        points = points.unsqueeze(0) if points.dim() == 2 else points
        labels = labels.unsqueeze(0) if labels.dim() == 1 else labels
        if points.dim() != 3 or points.shape[0] != 1 or points.shape[-1] != 2:
            raise ValueError(f"points must be [N, 2] (x, y), got shape {tuple(points.shape)}")
        if labels.shape != points.shape[:2]:
            raise ValueError(
                f"labels must be [N] matching points [{points.shape[1]}, 2], got labels of shape {tuple(labels.shape)}"
            )
        if box is not None:
            if not clear_old_points:
                raise ValueError("a box must come before any clicks: add it with clear_old_points=True")
            box = torch.as_tensor(box, dtype=torch.float32)
            if box.numel() != 4:
                raise ValueError(f"box must be (x0, y0, x1, y1), got shape {tuple(box.shape)}")
            points = torch.cat([box.reshape(1, 2, 2).to(points.device), points], dim=1)
            labels = torch.cat([torch.tensor([[2, 3]], dtype=torch.int32, device=labels.device), labels], dim=1)
        if normalize_coords:
            points = points / torch.tensor([state.video_width, state.video_height]).to(points.device)
        points = points * self.image_size
        return points.to(state.device), labels.to(state.device)

    @torch.inference_mode()
    def add_new_mask(self, inference_state, frame_idx, obj_id, mask):
        """Give ``obj_id``'s mask (``HxW`` bool/0-1, any size) on a frame. Returns ``(frame_idx, obj_ids, masks)``."""
        state = inference_state
        frame_idx = self._check_frame_idx(state, frame_idx)
        mask = torch.as_tensor(mask)
        if mask.dim() != 2:
            raise ValueError(f"mask must be a 2-D HxW array, got shape {tuple(mask.shape)}")
        mask_inputs = mask[None, None].float().to(state.device)
        if tuple(mask.shape) != (self.image_size, self.image_size):
            mask_inputs = F.interpolate(
                mask_inputs,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
            mask_inputs = (mask_inputs >= 0.5).float()
        obj_idx = self._obj_id_to_idx(state, obj_id)
        obj = state.objects[obj_idx]
        obj.mask_inputs[frame_idx] = mask_inputs
        obj.point_inputs.pop(frame_idx, None)
        return self._prompt_frame(state, obj_idx, frame_idx, mask_inputs=mask_inputs)

    def _prompt_frame(self, state, obj_idx, frame_idx, point_inputs=None, mask_inputs=None):
        """Predict the object on a prompted frame (no memory encoding yet) and report all objects."""
        obj = state.objects[obj_idx]
        is_init = frame_idx not in obj.frames_tracked
        reverse = False if is_init else obj.frames_tracked[frame_idx]
        is_cond = is_init or self.add_all_frames_to_correct_as_cond
        prev_logits = None
        if point_inputs is not None:
            prev = obj.temp_outputs.bucket(is_cond).get(frame_idx) or obj.outputs.find(frame_idx)
            if prev is not None and prev.pred_masks is not None:
                prev_logits = torch.clamp(prev.pred_masks.to(state.device, non_blocking=True), -32.0, 32.0)
        out, _ = self._run_single_frame_inference(
            state,
            obj.outputs,
            frame_idx,
            1,
            is_init,
            point_inputs,
            mask_inputs,
            reverse,
            run_mem_encoder=False,
            prev_sam_mask_logits=prev_logits,
        )
        obj.temp_outputs.bucket(is_cond)[frame_idx] = out
        masks = self._consolidate_temp_output_across_obj(state, frame_idx, is_cond, consolidate_at_video_res=True)
        _, video_res = self._get_orig_video_res_output(state, masks["pred_masks_video_res"])
        return frame_idx, state.obj_ids, video_res

    # ================================================================== propagation
    @torch.inference_mode()
    def propagate_in_video_preflight(self, inference_state) -> None:
        """Encode the prompted frames into memory and check every object has a prompt."""
        state = inference_state
        if not state.objects:
            raise VideoPromptError(
                "no prompts yet: add points, a box or a mask (add_new_points_or_box / "
                "add_new_mask) for at least one object before propagating"
            )
        for obj_idx, obj in enumerate(state.objects):
            for is_cond in (False, True):
                temp = obj.temp_outputs.bucket(is_cond)
                for frame_idx, out in temp.items():
                    if out.maskmem_features is None:
                        self._encode_prompted_frame(state, frame_idx, out)
                    obj.outputs.bucket(is_cond)[frame_idx] = out
                    if self.clear_non_cond_mem_around_input:
                        self._clear_obj_non_cond_mem_around_input(state, frame_idx, obj_idx)
                temp.clear()
            if not obj.outputs.cond_frame_outputs:
                raise VideoPromptError(
                    f"object id {obj.obj_id!r} has no prompt on any frame; add points, a box "
                    "or a mask for it (or remove_object it) before propagating"
                )
            for frame_idx in obj.outputs.cond_frame_outputs:
                obj.outputs.non_cond_frame_outputs.pop(frame_idx, None)

    def _encode_prompted_frame(self, state, frame_idx: int, out: FrameOutput) -> None:
        high_res = F.interpolate(
            out.pred_masks.to(state.device),
            size=(self.image_size, self.image_size),
            mode="bilinear",
            align_corners=False,
        )
        out.maskmem_features, out.maskmem_pos_enc = self._run_memory_encoder(
            state, frame_idx, 1, high_res, out.object_score_logits, is_mask_from_pts=True
        )

    def _processing_order(self, state, start_frame_idx, max_frame_num_to_track, reverse) -> range:
        n = state.num_frames
        if start_frame_idx is None:  # the earliest prompted frame
            start_frame_idx = min(t for obj in state.objects for t in obj.outputs.cond_frame_outputs)
        start_frame_idx = self._check_frame_idx(state, start_frame_idx)
        if max_frame_num_to_track is None:
            max_frame_num_to_track = n
        if max_frame_num_to_track < 0:
            raise ValueError(f"max_frame_num_to_track must be >= 0, got {max_frame_num_to_track}")
        if reverse:
            end = max(start_frame_idx - max_frame_num_to_track, 0)
            return range(start_frame_idx, end - 1, -1) if start_frame_idx > 0 else range(0)
        end = min(start_frame_idx + max_frame_num_to_track, n - 1)
        return range(start_frame_idx, end + 1)

    @torch.inference_mode()
    def propagate_in_video(
        self,
        inference_state,
        start_frame_idx=None,
        max_frame_num_to_track=None,
        reverse=False,
        progress: bool | None = None,
    ):
        """Track every object through the video; yields ``(frame_idx, obj_ids, video_res_masks)``."""
        state = inference_state
        self.propagate_in_video_preflight(state)
        order = self._processing_order(state, start_frame_idx, max_frame_num_to_track, reverse)
        from dp_sam2._progress import progress as progress_bar

        for frame_idx in progress_bar(order, desc="propagate in video", disable=not self._progress(progress)):
            masks = torch.cat(
                [self._track_object(state, i, frame_idx, reverse) for i in range(len(state.objects))], dim=0
            )
            _, video_res = self._get_orig_video_res_output(state, masks)
            yield frame_idx, state.obj_ids, video_res

    def _track_object(self, state, obj_idx: int, frame_idx: int, reverse: bool) -> torch.Tensor:
        """One object's low-res mask logits on ``frame_idx`` (the prompt's output on prompted frames)."""
        obj = state.objects[obj_idx]
        out = obj.outputs.cond_frame_outputs.get(frame_idx)
        if out is not None:
            masks = out.pred_masks.to(state.device, non_blocking=True)
            if self.clear_non_cond_mem_around_input:
                self._clear_obj_non_cond_mem_around_input(state, frame_idx, obj_idx)
        else:
            out, masks = self._run_single_frame_inference(
                state, obj.outputs, frame_idx, 1, False, None, None, reverse, run_mem_encoder=True
            )
            obj.outputs.non_cond_frame_outputs[frame_idx] = out
        obj.frames_tracked[frame_idx] = reverse
        return masks
