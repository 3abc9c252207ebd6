"""Editing a video session: clearing a frame's prompts, removing an object, resetting (mixed into
:class:`~dp_sam2.predictors.video.SAM2VideoPredictor`, as :mod:`.video_frames`)."""

from __future__ import annotations

import torch


class VideoEditOps:
    """Prompt and object removal; expects the attributes of SAM2Base and SAM2VideoPredictor."""

    @torch.inference_mode()
    def clear_all_prompts_in_frame(self, inference_state, frame_idx, obj_id, need_output=True):
        """Remove ``obj_id``'s clicks / mask on a frame; its output there becomes a tracked one."""
        state = inference_state
        frame_idx = self._check_frame_idx(state, frame_idx)
        obj = state.objects[self._existing_obj_idx(state, obj_id)]
        obj.point_inputs.pop(frame_idx, None)
        obj.mask_inputs.pop(frame_idx, None)
        obj.temp_outputs.cond_frame_outputs.pop(frame_idx, None)
        obj.temp_outputs.non_cond_frame_outputs.pop(frame_idx, None)
        out = obj.outputs.cond_frame_outputs.pop(frame_idx, None)
        if out is not None:
            obj.outputs.non_cond_frame_outputs[frame_idx] = out
            obj.frames_tracked.pop(frame_idx, None)
        if not need_output:
            return None
        return frame_idx, state.obj_ids, self._frame_masks(state, frame_idx)

    def _frame_masks(self, state, frame_idx: int) -> torch.Tensor:
        is_cond = any(frame_idx in o.temp_outputs.cond_frame_outputs for o in state.objects)
        masks = self._consolidate_temp_output_across_obj(state, frame_idx, is_cond, consolidate_at_video_res=True)
        return self._get_orig_video_res_output(state, masks["pred_masks_video_res"])[1]

    @torch.inference_mode()
    def reset_state(self, inference_state) -> None:
        """Forget every object, prompt and result (the frames stay)."""
        self._reset_tracking_results(inference_state)
        inference_state.objects.clear()

    def _reset_tracking_results(self, inference_state) -> None:
        for obj in inference_state.objects:
            obj.clear()

    @torch.inference_mode()
    def remove_object(self, inference_state, obj_id, strict=False, need_output=True):
        """Remove ``obj_id``. Returns ``(obj_ids, updated_frames)`` where ``updated_frames`` lists
        ``(frame_idx, masks)`` of the frames it had prompts on. An unknown id is ignored unless
        ``strict`` (then an error names the known ids), as the official."""
        state = inference_state
        if obj_id not in state.obj_ids:
            if strict:
                self._existing_obj_idx(state, obj_id)
            return state.obj_ids, []
        if len(state.objects) == 1:
            self.reset_state(state)
            return state.obj_ids, []
        obj = state.objects[state.obj_ids.index(obj_id)]
        prompted = sorted(set(obj.point_inputs) | set(obj.mask_inputs))
        for frame_idx in prompted:
            self.clear_all_prompts_in_frame(state, frame_idx, obj_id, need_output=False)
        state.objects.remove(obj)
        updated = [(t, self._frame_masks(state, t)) for t in prompted] if need_output else []
        return state.obj_ids, updated

    def _clear_obj_non_cond_mem_around_input(self, inference_state, frame_idx: int, obj_idx: int) -> None:
        """Drop one object's tracked memories within ``num_maskmem`` (strided) frames of ``frame_idx``."""
        span = self.memory_temporal_stride_for_eval * self.num_maskmem
        bucket = inference_state.objects[obj_idx].outputs.non_cond_frame_outputs
        for t in range(frame_idx - span, frame_idx + span + 1):
            bucket.pop(t, None)

    def _clear_non_cond_mem_around_input(self, inference_state, frame_idx: int) -> None:
        for obj_idx in range(len(inference_state.objects)):
            self._clear_obj_non_cond_mem_around_input(inference_state, frame_idx, obj_idx)
