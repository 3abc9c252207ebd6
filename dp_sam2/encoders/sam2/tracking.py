"""Tracking logic of SAM2Base: memory conditioning, memory encoding and ``track_step``.

A frame's features attend to a memory bank of earlier frames of the same object: spatial memories
(``maskmem_features``, stored in bf16 by the video predictor, cast to the compute dtype at use) of
the conditioning frames and up to ``num_maskmem - 1`` recent frames, each with its position
encoding plus the temporal ``maskmem_tpos_enc``; and object pointers (one token per frame, split
into ``hidden_dim // mem_dim`` tokens) with a sine encoding of their temporal distance.
``output_dict`` is ``{"cond_frame_outputs": {t: out}, "non_cond_frame_outputs": {t: out}}``, each
``out`` indexable by ``"maskmem_features"``, ``"maskmem_pos_enc"`` and ``"obj_ptr"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def select_closest_cond_frames(frame_idx: int, cond_outputs: dict, max_num: int) -> tuple[dict, dict]:
    """Keep at most ``max_num`` conditioning frames: the closest before ``frame_idx``, the closest
    at/after it, then the temporally closest others. Returns ``(selected, unselected)``."""
    if max_num == -1 or len(cond_outputs) <= max_num:
        return cond_outputs, {}
    if max_num < 2:
        raise ValueError(f"max_cond_frames_in_attn must be -1 or >= 2, got {max_num}")
    chosen = []
    before = max((t for t in cond_outputs if t < frame_idx), default=None)
    after = min((t for t in cond_outputs if t >= frame_idx), default=None)
    chosen += [t for t in (before, after) if t is not None]
    rest = sorted((t for t in cond_outputs if t not in chosen), key=lambda t: abs(t - frame_idx))
    chosen += rest[: max_num - len(chosen)]
    selected = {t: cond_outputs[t] for t in chosen}
    unselected = {t: v for t, v in cond_outputs.items() if t not in selected}
    return selected, unselected


def sine_encoding_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """``[N] -> [N, dim]``: sines of the first half of frequencies, then cosines (Transformer PE)."""
    half = dim // 2
    idx = torch.arange(half, dtype=torch.float32, device=positions.device)
    freqs = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / half)
    angles = positions.unsqueeze(-1) / freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _seq_to_map(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(HW, B, C) -> (B, C, H, W)``."""
    return x.permute(1, 2, 0).reshape(x.size(1), x.size(2), *size)


class SAM2TrackingMixin:
    """Memory conditioning, memory encoding and ``track_step`` for :class:`SAM2Base`."""

    # What SAM2Base provides (flags of .model.SAM2Flags, sizes, parameters, modules): the mixin's
    # contract, declared for readers and the type checker.
    training: bool
    num_maskmem: int
    hidden_dim: int
    mem_dim: int
    memory_temporal_stride_for_eval: int
    max_cond_frames_in_attn: int
    max_obj_ptrs_in_encoder: int
    directly_add_no_mem_embed: bool
    use_obj_ptrs_in_encoder: bool
    add_tpos_enc_to_obj_ptrs: bool
    proj_tpos_enc_in_obj_ptrs: bool
    use_signed_tpos_enc_to_obj_ptrs: bool
    only_obj_ptrs_in_the_past_for_eval: bool
    binarize_mask_from_pts_for_mem_enc: bool
    sigmoid_scale_for_mem_enc: float
    sigmoid_bias_for_mem_enc: float
    non_overlap_masks_for_mem_enc: bool
    use_mask_input_as_output_without_sam: bool
    multimask_output_in_sam: bool
    multimask_output_for_tracking: bool
    multimask_min_pt_num: int
    multimask_max_pt_num: int
    maskmem_tpos_enc: torch.Tensor
    no_mem_embed: torch.Tensor
    no_mem_pos_enc: torch.Tensor
    no_obj_embed_spatial: torch.Tensor | None
    obj_ptr_tpos_proj: Callable[[torch.Tensor], torch.Tensor]
    memory_attention: Callable[..., torch.Tensor]
    memory_encoder: Callable[..., dict]
    _forward_sam_heads: Callable[..., Any]
    _use_mask_as_output: Callable[..., Any]

    # ------------------------------------------------------------------ which frames to attend to
    def _memory_frame_index(self, frame_idx: int, t_rel: int, reverse: bool) -> int:
        """The frame ``t_rel`` memory slots before ``frame_idx`` (after it when ``reverse``)."""
        stride = 1 if self.training else self.memory_temporal_stride_for_eval
        if t_rel == 1:  # the adjacent frame, whatever the stride
            return frame_idx + 1 if reverse else frame_idx - 1
        if reverse:
            nearest = -(-(frame_idx + 2) // stride) * stride
            return nearest + (t_rel - 2) * stride
        nearest = ((frame_idx - 2) // stride) * stride
        return nearest - (t_rel - 2) * stride

    def _memory_frames(self, frame_idx, output_dict, selected, unselected, reverse) -> list[tuple[int, object]]:
        """``(t_pos, output)`` of the frames whose spatial memories are used: conditioning frames
        at ``t_pos = 0``, then recent frames from oldest (1) to newest (``num_maskmem - 1``)."""
        frames = [(0, out) for out in selected.values()]
        non_cond = output_dict["non_cond_frame_outputs"]
        for t_pos in range(1, self.num_maskmem):
            t = self._memory_frame_index(frame_idx, self.num_maskmem - t_pos, reverse)
            out = non_cond.get(t, unselected.get(t))
            if out is not None:
                frames.append((t_pos, out))
        return frames

    def _spatial_memory_tokens(self, frames, device, dtype) -> tuple[list, list]:
        """Flattened ``(HW, B, mem_dim)`` memories and position encodings (spatial + temporal)."""
        memories, positions = [], []
        for t_pos, out in frames:
            feats = out["maskmem_features"].to(device=device, non_blocking=True).to(dtype)
            memories.append(feats.flatten(2).permute(2, 0, 1))
            pos = out["maskmem_pos_enc"][-1].to(device).flatten(2).permute(2, 0, 1)
            positions.append(pos + self.maskmem_tpos_enc[self.num_maskmem - t_pos - 1])
        return memories, positions

    def _pointer_frames(self, frame_idx, output_dict, selected, unselected, num_frames, reverse):
        """``(temporal distance, obj_ptr)`` of conditioning frames and up to
        ``max_obj_ptrs_in_encoder - 1`` recent frames."""
        max_ptrs = min(num_frames, self.max_obj_ptrs_in_encoder)
        cond = selected
        if not self.training and self.only_obj_ptrs_in_the_past_for_eval:
            cond = {t: o for t, o in selected.items() if (t >= frame_idx if reverse else t <= frame_idx)}
        sign = -1 if reverse else 1
        pairs = [
            ((frame_idx - t) * sign if self.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t), out["obj_ptr"])
            for t, out in cond.items()
        ]
        non_cond = output_dict["non_cond_frame_outputs"]
        for t_diff in range(1, max_ptrs):
            t = frame_idx + t_diff if reverse else frame_idx - t_diff
            if t < 0 or (num_frames is not None and t >= num_frames):
                break
            out = non_cond.get(t, unselected.get(t))
            if out is not None:
                pairs.append((t_diff, out["obj_ptr"]))
        return pairs, max_ptrs

    def _pointer_tokens(self, pairs, max_ptrs: int, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Object pointers as ``(N * C // mem_dim, B, mem_dim)`` tokens and their encodings."""
        dists = [d for d, _ in pairs]
        ptrs = torch.stack([p.to(device) for _, p in pairs], dim=0)  # [N, B, C]
        c = self.hidden_dim
        if self.add_tpos_enc_to_obj_ptrs:
            rel = torch.tensor(dists, device=device) / (max_ptrs - 1)
            pos = sine_encoding_1d(rel, c if self.proj_tpos_enc_in_obj_ptrs else self.mem_dim)
            pos = self.obj_ptr_tpos_proj(pos).unsqueeze(1).expand(-1, batch, self.mem_dim)
        else:
            pos = ptrs.new_zeros(len(dists), batch, self.mem_dim)
        if self.mem_dim < c:
            split = c // self.mem_dim
            ptrs = ptrs.reshape(-1, batch, split, self.mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
            pos = pos.repeat_interleave(split, dim=0)
        return ptrs, pos

    # ------------------------------------------------------------------ memory conditioning
    def _prepare_memory_conditioned_features(
        self,
        frame_idx,
        is_init_cond_frame,
        current_vision_feats,
        current_vision_pos_embeds,
        feat_sizes,
        output_dict,
        num_frames,
        track_in_reverse=False,
    ) -> torch.Tensor:
        """The current frame's top-level features fused with the memory bank, ``[B, C, H, W]``."""
        feats = current_vision_feats[-1]
        size = feat_sizes[-1]
        if self.num_maskmem == 0:  # SAM on single images: no memory at all
            return _seq_to_map(feats, size)
        if is_init_cond_frame and self.directly_add_no_mem_embed:
            return _seq_to_map(feats + self.no_mem_embed, size)
        batch, device = feats.size(1), feats.device
        num_ptr_tokens = 0
        if is_init_cond_frame:  # a dummy memory token instead of an empty memory
            memories = [self.no_mem_embed.expand(1, batch, self.mem_dim)]
            positions = [self.no_mem_pos_enc.expand(1, batch, self.mem_dim)]
        else:
            cond = output_dict["cond_frame_outputs"]
            if not cond:
                raise ValueError(f"frame {frame_idx} is tracked from memory but no conditioning frame exists")
            selected, unselected = select_closest_cond_frames(frame_idx, cond, self.max_cond_frames_in_attn)
            frames = self._memory_frames(frame_idx, output_dict, selected, unselected, track_in_reverse)
            memories, positions = self._spatial_memory_tokens(frames, device, feats.dtype)
            if self.use_obj_ptrs_in_encoder:
                pairs, max_ptrs = self._pointer_frames(
                    frame_idx, output_dict, selected, unselected, num_frames, track_in_reverse
                )
                if pairs:
                    ptrs, ptr_pos = self._pointer_tokens(pairs, max_ptrs, batch, device)
                    memories.append(ptrs)
                    positions.append(ptr_pos)
                    num_ptr_tokens = ptrs.shape[0]
        fused = self.memory_attention(
            curr=current_vision_feats,
            curr_pos=current_vision_pos_embeds,
            memory=torch.cat(memories, dim=0),
            memory_pos=torch.cat(positions, dim=0),
            num_obj_ptr_tokens=num_ptr_tokens,
        )
        return _seq_to_map(fused, size)

    # ------------------------------------------------------------------ memory encoding
    def _mask_for_memory(self, pred_masks_high_res: torch.Tensor, is_mask_from_pts: bool) -> torch.Tensor:
        if self.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts and not self.training:
            mask = (pred_masks_high_res > 0).float()
        else:
            mask = torch.sigmoid(pred_masks_high_res)
        if self.sigmoid_scale_for_mem_enc != 1.0:
            mask = mask * self.sigmoid_scale_for_mem_enc
        if self.sigmoid_bias_for_mem_enc != 0.0:
            mask = mask + self.sigmoid_bias_for_mem_enc
        return mask

    def _encode_new_memory(
        self, current_vision_feats, feat_sizes, pred_masks_high_res, object_score_logits, is_mask_from_pts
    ):
        """Encode the frame's features and predicted mask into ``(maskmem_features, maskmem_pos_enc)``."""
        pix_feat = _seq_to_map(current_vision_feats[-1], feat_sizes[-1])
        if self.non_overlap_masks_for_mem_enc and not self.training:
            pred_masks_high_res = self._apply_non_overlapping_constraints(pred_masks_high_res)
        mask = self._mask_for_memory(pred_masks_high_res, is_mask_from_pts)
        out = self.memory_encoder(pix_feat, mask, skip_mask_sigmoid=True)
        features, pos_enc = out["vision_features"], out["vision_pos_enc"]
        if self.no_obj_embed_spatial is not None:  # mark frames where the object is absent
            absent = 1 - (object_score_logits > 0).float()
            features = features + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
        return features, pos_enc

    # ------------------------------------------------------------------ one tracking step
    def _use_multimask(self, is_init_cond_frame, point_inputs) -> bool:
        num_pts = 0 if point_inputs is None else point_inputs["point_labels"].size(1)
        return bool(
            self.multimask_output_in_sam
            and (is_init_cond_frame or self.multimask_output_for_tracking)
            and self.multimask_min_pt_num <= num_pts <= self.multimask_max_pt_num
        )

    def _track_step(
        self,
        frame_idx,
        is_init_cond_frame,
        current_vision_feats,
        current_vision_pos_embeds,
        feat_sizes,
        point_inputs,
        mask_inputs,
        output_dict,
        num_frames,
        track_in_reverse,
        prev_sam_mask_logits,
    ):
        """Run the SAM heads on one frame; returns ``(current_out, sam_outputs, high_res_features, pix_feat)``."""
        current_out = {"point_inputs": point_inputs, "mask_inputs": mask_inputs}
        high_res = None
        if len(current_vision_feats) > 1:
            high_res = [_seq_to_map(x, s) for x, s in zip(current_vision_feats[:-1], feat_sizes[:-1], strict=True)]
        if mask_inputs is not None and self.use_mask_input_as_output_without_sam:
            pix_feat = _seq_to_map(current_vision_feats[-1], feat_sizes[-1])
            return current_out, self._use_mask_as_output(pix_feat, high_res, mask_inputs), high_res, pix_feat
        pix_feat = self._prepare_memory_conditioned_features(
            frame_idx,
            is_init_cond_frame,
            current_vision_feats[-1:],
            current_vision_pos_embeds[-1:],
            feat_sizes[-1:],
            output_dict,
            num_frames,
            track_in_reverse,
        )
        if prev_sam_mask_logits is not None:  # earlier logits of this frame refined by new clicks
            if point_inputs is None or mask_inputs is not None:
                raise ValueError("prev_sam_mask_logits can only be combined with point inputs")
            mask_inputs = prev_sam_mask_logits
        sam_outputs = self._forward_sam_heads(
            pix_feat,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            high_res_features=high_res,
            multimask_output=self._use_multimask(is_init_cond_frame, point_inputs),
        )
        return current_out, sam_outputs, high_res, pix_feat

    def _encode_memory_in_output(
        self,
        current_vision_feats,
        feat_sizes,
        point_inputs,
        run_mem_encoder,
        high_res_masks,
        object_score_logits,
        current_out,
    ) -> None:
        features = pos_enc = None
        if run_mem_encoder and self.num_maskmem > 0:
            features, pos_enc = self._encode_new_memory(
                current_vision_feats, feat_sizes, high_res_masks, object_score_logits, point_inputs is not None
            )
        current_out["maskmem_features"] = features
        current_out["maskmem_pos_enc"] = pos_enc

    def track_step(
        self,
        frame_idx,
        is_init_cond_frame,
        current_vision_feats,
        current_vision_pos_embeds,
        feat_sizes,
        point_inputs,
        mask_inputs,
        output_dict,
        num_frames,
        track_in_reverse=False,
        run_mem_encoder=True,
        prev_sam_mask_logits=None,
    ) -> dict:
        """Predict the object's mask on one frame from its prompts and/or the memory bank, and
        (``run_mem_encoder``) encode the prediction into a new memory. Returns the official dict:
        ``pred_masks``, ``pred_masks_high_res``, ``obj_ptr``, ``object_score_logits`` (eval),
        ``maskmem_features``, ``maskmem_pos_enc``, ``point_inputs``, ``mask_inputs``."""
        current_out, sam, _, _ = self._track_step(
            frame_idx,
            is_init_cond_frame,
            current_vision_feats,
            current_vision_pos_embeds,
            feat_sizes,
            point_inputs,
            mask_inputs,
            output_dict,
            num_frames,
            track_in_reverse,
            prev_sam_mask_logits,
        )
        current_out["pred_masks"] = sam.low_res_masks
        current_out["pred_masks_high_res"] = sam.high_res_masks
        current_out["obj_ptr"] = sam.obj_ptr
        if not self.training:
            current_out["object_score_logits"] = sam.object_score_logits
        self._encode_memory_in_output(
            current_vision_feats,
            feat_sizes,
            point_inputs,
            run_mem_encoder,
            sam.high_res_masks,
            sam.object_score_logits,
            current_out,
        )
        return current_out

    # ------------------------------------------------------------------ several objects
    def _apply_non_overlapping_constraints(self, pred_masks: torch.Tensor) -> torch.Tensor:
        """Keep each pixel only for the highest-scoring object (batch dim = objects); the others'
        scores there are clamped to at most -10."""
        if pred_masks.size(0) == 1:
            return pred_masks
        winner = torch.argmax(pred_masks, dim=0, keepdim=True)
        index = torch.arange(pred_masks.size(0), device=pred_masks.device)[:, None, None, None]
        return torch.where(winner == index, pred_masks, torch.clamp(pred_masks, max=-10.0))
