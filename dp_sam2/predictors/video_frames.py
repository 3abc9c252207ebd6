"""The per-frame model calls of the video predictor: image features of a frame, one tracking step,
memory encoding, and consolidating every object's masks of a frame (mixed into
:class:`~dp_sam2.predictors.video.SAM2VideoPredictor`; the session logic stays there)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dp_sam2.encoders.sam2.linear import exact_gemm
from dp_sam2.encoders.sam2.model import NO_OBJ_SCORE
from dp_sam2.encoders.sam2.precision import precision_autocast

from .video_state import FrameOutput


class VideoFrameOps:
    """Model calls on one frame; expects the attributes of SAM2Base and SAM2VideoPredictor."""

    # ================================================================== outputs
    def _get_orig_video_res_output(self, inference_state, any_res_masks):
        """``(masks on the compute device, masks at the video's resolution)`` (non-overlap applied)."""
        state = inference_state
        any_res_masks = any_res_masks.to(state.device, non_blocking=True)
        size = (state.video_height, state.video_width)
        video_res = any_res_masks
        if tuple(any_res_masks.shape[-2:]) != size:
            video_res = F.interpolate(any_res_masks, size=size, mode="bilinear", align_corners=False)
        if self.non_overlap_masks:
            video_res = self._apply_non_overlapping_constraints(video_res)
        return any_res_masks, video_res

    def _consolidate_temp_output_across_obj(
        self, inference_state, frame_idx, is_cond, consolidate_at_video_res=False
    ) -> dict:
        """Every object's latest mask on ``frame_idx`` in one ``[num_objects, 1, H, W]`` tensor
        (``NO_OBJ_SCORE`` for objects without an output there)."""
        state = inference_state
        if consolidate_at_video_res:
            key, size = "pred_masks_video_res", (state.video_height, state.video_width)
        else:
            key, size = "pred_masks", (self.image_size // 4, self.image_size // 4)
        masks = torch.full(
            (len(state.objects), 1, *size), NO_OBJ_SCORE, dtype=torch.float32, device=state.storage_device
        )
        for i, obj in enumerate(state.objects):
            out = obj.temp_outputs.bucket(is_cond).get(frame_idx) or obj.outputs.find(frame_idx)
            if out is None:
                continue
            m = out.pred_masks
            if tuple(m.shape[-2:]) != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            masks[i : i + 1] = m
        return {key: masks}

    # ================================================================== model calls
    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        """``(image, backbone_out, vision_feats, vision_pos_embeds, feat_sizes)`` of a frame,
        expanded to ``batch_size``; the latest frame's features are cached."""
        state = inference_state
        image, backbone_out = state.cached_features.get(frame_idx, (None, None))
        if backbone_out is None:
            image = state.images[frame_idx].to(state.device).float().unsqueeze(0)
            # the official's GEMM kernel whatever the trunk's backend: the memory amplifies rounding (linear.exact_gemm)
            with precision_autocast(image.device, self.precision), exact_gemm():
                backbone_out = self.forward_image(image)
            if self.precision != "fp32":
                backbone_out = {
                    k: [t.float() for t in v] if isinstance(v, list) else v.float() for k, v in backbone_out.items()
                }
            state.cached_features = {frame_idx: (image, backbone_out)}
        expanded = {
            "backbone_fpn": [x.expand(batch_size, -1, -1, -1) for x in backbone_out["backbone_fpn"]],
            "vision_pos_enc": [x.expand(batch_size, -1, -1, -1) for x in backbone_out["vision_pos_enc"]],
        }
        return (image.expand(batch_size, -1, -1, -1),) + tuple(self._prepare_backbone_features(expanded))

    def _run_single_frame_inference(
        self,
        inference_state,
        output_dict,
        frame_idx,
        batch_size,
        is_init_cond_frame,
        point_inputs,
        mask_inputs,
        reverse,
        run_mem_encoder,
        prev_sam_mask_logits=None,
    ):
        """Track one object on one frame; returns ``(FrameOutput kept in the state, mask logits on device)``."""
        state = inference_state
        if point_inputs is not None and mask_inputs is not None:
            raise ValueError("a frame takes either clicks/box or a mask for an object, not both")
        _, _, feats, pos, sizes = self._get_image_feature(state, frame_idx, batch_size)
        out = self.track_step(
            frame_idx,
            is_init_cond_frame,
            feats,
            pos,
            sizes,
            point_inputs,
            mask_inputs,
            output_dict,
            self._memory_num_frames(state),
            track_in_reverse=reverse,
            run_mem_encoder=run_mem_encoder,
            prev_sam_mask_logits=prev_sam_mask_logits,
        )
        memory = out["maskmem_features"]
        if memory is not None:  # stored in bfloat16, cast back at use
            memory = memory.to(torch.bfloat16).to(state.storage_device, non_blocking=True)
        masks = out["pred_masks"]
        if self.fill_hole_area > 0:
            from dp_sam2.ext import fill_holes_in_mask_scores

            masks = fill_holes_in_mask_scores(masks, self.fill_hole_area)
        kept = FrameOutput(
            memory,
            self._get_maskmem_pos_enc(state, out),
            masks.to(state.storage_device, non_blocking=True),
            out["obj_ptr"],
            out["object_score_logits"],
        )
        return kept, masks

    def _run_memory_encoder(
        self, inference_state, frame_idx, batch_size, high_res_masks, object_score_logits, is_mask_from_pts
    ):
        """Encode a (consolidated) mask of a frame into memory: ``(bf16 features, pos_enc)``."""
        state = inference_state
        _, _, feats, _, sizes = self._get_image_feature(state, frame_idx, batch_size)
        features, pos_enc = self._encode_new_memory(feats, sizes, high_res_masks, object_score_logits, is_mask_from_pts)
        features = features.to(torch.bfloat16).to(state.storage_device, non_blocking=True)
        return features, self._get_maskmem_pos_enc(state, {"maskmem_pos_enc": pos_enc})

    def _get_maskmem_pos_enc(self, inference_state, current_out):
        """The memory position encoding is the same for every frame: keep one copy per session."""
        pos = current_out["maskmem_pos_enc"]
        if pos is None:
            return None
        constants = inference_state.constants
        if "maskmem_pos_enc" not in constants:
            constants["maskmem_pos_enc"] = [x[0:1].clone() for x in pos]
        return [x.expand(pos[0].size(0), -1, -1, -1) for x in constants["maskmem_pos_enc"]]
