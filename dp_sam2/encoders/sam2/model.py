"""SAM2Base: the SAM 2 model — image encoder, prompt encoder, mask decoder and the modules of the
video memory — with the official attribute names, flags and checkpoint keys.

The modules only compute; state (images set, videos tracked) lives in the predictors. The tracking
logic (memory conditioning, memory encoding, ``track_step``) lives in :mod:`.tracking`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import trunc_normal_

from .image_encoder import ImageEncoder
from .layers import MLP
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .tracking import SAM2TrackingMixin
from .transformer import TwoWayTransformer

NO_OBJ_SCORE = -1024.0  # logit given to every pixel when the object is judged absent


@dataclass
class SAM2Flags:
    """The behaviour switches of SAM 2, under their official names and defaults.

    Most take the same value in every released config; the yaml files set them explicitly.
    """

    num_maskmem: int = 7  # memory frames attended to: 1 conditioning slot + 6 previous frames
    image_size: int = 512  # input side in pixels (a multiple of 32)
    backbone_stride: int = 16  # stride of the image embedding the mask decoder reads
    sigmoid_scale_for_mem_enc: float = 1.0  # mask logits -> sigmoid(scale * x + bias) before memory encoding
    sigmoid_bias_for_mem_enc: float = 0.0  # (the bias of the line above)
    binarize_mask_from_pts_for_mem_enc: bool = False  # encode a thresholded mask on frames prompted by clicks
    use_mask_input_as_output_without_sam: bool = False  # a mask prompt becomes the output directly (no decoder)
    max_cond_frames_in_attn: int = -1  # most conditioning frames attended to, nearest in time first (-1: all)
    directly_add_no_mem_embed: bool = False  # single images: add no_mem_embed instead of attending to memory
    use_high_res_features_in_sam: bool = False  # feed the stride-4/8 maps (conv_s0/s1) to the mask decoder
    multimask_output_in_sam: bool = False  # 3 candidate masks on the first click of a frame
    multimask_min_pt_num: int = 1  # ... when the frame has at least this many clicks
    multimask_max_pt_num: int = 1  # ... and at most this many
    multimask_output_for_tracking: bool = False  # also choose among 3 masks on tracked (unprompted) frames
    use_multimask_token_for_obj_ptr: bool = False  # object pointer from the chosen mask's token, not token 0
    iou_prediction_use_sigmoid: bool = False  # IoU head output through a sigmoid
    memory_temporal_stride_for_eval: int = 1  # at eval, take every r-th previous frame as memory
    non_overlap_masks_for_mem_enc: bool = False  # objects' masks made disjoint before memory encoding
    use_obj_ptrs_in_encoder: bool = False  # object pointers join the spatial memories in memory attention
    max_obj_ptrs_in_encoder: int = 16  # most object pointers attended to
    add_tpos_enc_to_obj_ptrs: bool = True  # object pointers get a temporal position encoding
    proj_tpos_enc_in_obj_ptrs: bool = False  # ... passed through a learned linear (obj_ptr_tpos_proj)
    use_signed_tpos_enc_to_obj_ptrs: bool = False  # ... signed by whether the frame is before or after
    only_obj_ptrs_in_the_past_for_eval: bool = False  # at eval, only pointers of frames before this one
    pred_obj_scores: bool = False  # predict whether the object is present at all (occlusion)
    pred_obj_scores_mlp: bool = False  # ... with an MLP head instead of a linear one
    fixed_no_obj_ptr: bool = False  # absent object: a learned no_obj_ptr instead of the decoder's pointer
    soft_no_obj_ptr: bool = False  # ... blended by the presence probability rather than switched
    use_mlp_for_obj_ptr_proj: bool = False  # object pointer projection: 3-layer MLP (else linear)
    no_obj_embed_spatial: bool = False  # SAM 2.1: a learned embedding added to memories of absent objects
    sam_mask_decoder_extra_args: dict | None = None  # extra MaskDecoder kwargs (dynamic multimask, ...)
    compile_image_encoder: bool = False  # torch.compile the image encoder when the model is built

    def validate(self) -> None:
        if self.image_size % 32 or self.image_size <= 0:
            raise ValueError(f"image_size must be a positive multiple of 32, got {self.image_size}")
        if self.proj_tpos_enc_in_obj_ptrs and not self.add_tpos_enc_to_obj_ptrs:
            raise ValueError("proj_tpos_enc_in_obj_ptrs=True needs add_tpos_enc_to_obj_ptrs=True")
        if self.fixed_no_obj_ptr and not (self.pred_obj_scores and self.use_obj_ptrs_in_encoder):
            raise ValueError("fixed_no_obj_ptr=True needs pred_obj_scores and use_obj_ptrs_in_encoder")


_FLAG_NAMES = {f.name for f in dataclasses.fields(SAM2Flags)}


class SAMHeadsOutput(NamedTuple):
    """What :meth:`SAM2Base._forward_sam_heads` returns (unpacks like the official 7-tuple)."""

    low_res_multimasks: torch.Tensor  # [B, M, 4h, 4w]
    high_res_multimasks: torch.Tensor  # [B, M, image_size, image_size]
    ious: torch.Tensor  # [B, M]
    low_res_masks: torch.Tensor  # [B, 1, 4h, 4w] best of the M
    high_res_masks: torch.Tensor  # [B, 1, image_size, image_size]
    obj_ptr: torch.Tensor  # [B, C]
    object_score_logits: torch.Tensor  # [B, 1]


class SAM2Base(SAM2TrackingMixin, nn.Module):
    # flags of SAM2Flags set as attributes in __init__ (the official names) that the heads read
    image_size: int
    backbone_stride: int
    use_high_res_features_in_sam: bool
    iou_prediction_use_sigmoid: bool
    pred_obj_scores: bool
    pred_obj_scores_mlp: bool
    use_multimask_token_for_obj_ptr: bool
    use_mlp_for_obj_ptr_proj: bool
    sam_mask_decoder_extra_args: dict | None
    fixed_no_obj_ptr: bool
    soft_no_obj_ptr: bool

    def __init__(
        self, image_encoder: ImageEncoder, memory_attention: nn.Module, memory_encoder: nn.Module, **flags
    ) -> None:
        super().__init__()
        unknown = set(flags) - _FLAG_NAMES
        if unknown:
            raise TypeError(f"SAM2Base got unknown options {sorted(unknown)}; known: {sorted(_FLAG_NAMES)}")
        cfg = SAM2Flags(**flags)
        cfg.validate()
        self.flags = cfg
        for name in _FLAG_NAMES:  # official attribute names, read by user code and the tracker
            if name != "no_obj_embed_spatial":
                setattr(self, name, getattr(cfg, name))
        self.num_feature_levels = 3 if cfg.use_high_res_features_in_sam else 1
        self.hidden_dim = image_encoder.neck.d_model
        out_weight = getattr(getattr(memory_encoder, "out_proj", None), "weight", None)  # memories narrower than c
        self.mem_dim = int(out_weight.shape[0]) if out_weight is not None else self.hidden_dim

        # own parameters first: their order is the official state-dict order
        self.maskmem_tpos_enc = nn.Parameter(trunc_normal_(torch.zeros(cfg.num_maskmem, 1, 1, self.mem_dim), std=0.02))
        self.no_mem_embed = nn.Parameter(trunc_normal_(torch.zeros(1, 1, self.hidden_dim), std=0.02))
        self.no_mem_pos_enc = nn.Parameter(trunc_normal_(torch.zeros(1, 1, self.hidden_dim), std=0.02))
        if cfg.pred_obj_scores and cfg.use_obj_ptrs_in_encoder:
            self.no_obj_ptr = nn.Parameter(trunc_normal_(torch.zeros(1, self.hidden_dim), std=0.02))
        if cfg.no_obj_embed_spatial:
            self.no_obj_embed_spatial = nn.Parameter(trunc_normal_(torch.zeros(1, self.mem_dim), std=0.02))
        else:
            self.no_obj_embed_spatial = None

        self.image_encoder = image_encoder
        if cfg.use_obj_ptrs_in_encoder:
            self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.memory_attention = memory_attention
        self.memory_encoder = memory_encoder
        self._build_sam_heads()
        if cfg.compile_image_encoder:
            self.image_encoder.compile(mode="max-autotune", fullgraph=True, dynamic=False)

    # ------------------------------------------------------------------ construction
    def _build_sam_heads(self) -> None:
        c = self.hidden_dim
        self.sam_prompt_embed_dim = c
        self.sam_image_embedding_size = self.image_size // self.backbone_stride
        s = self.sam_image_embedding_size
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=c,
            image_embedding_size=(s, s),
            input_image_size=(self.image_size, self.image_size),
            mask_in_chans=16,
        )
        self.sam_mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=c, mlp_dim=2048, num_heads=8),
            transformer_dim=c,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            use_high_res_features=self.use_high_res_features_in_sam,
            iou_prediction_use_sigmoid=self.iou_prediction_use_sigmoid,
            pred_obj_scores=self.pred_obj_scores,
            pred_obj_scores_mlp=self.pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr=self.use_multimask_token_for_obj_ptr,
            **(self.sam_mask_decoder_extra_args or {}),
        )
        self.obj_ptr_proj: nn.Module = nn.Identity()
        if self.use_obj_ptrs_in_encoder:
            self.obj_ptr_proj = MLP(c, c, c, 3) if self.use_mlp_for_obj_ptr_proj else nn.Linear(c, c)
        self.obj_ptr_tpos_proj = nn.Linear(c, self.mem_dim) if self.proj_tpos_enc_in_obj_ptrs else nn.Identity()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            "SAM2Base has no forward(); use SAM2ImagePredictor / SAM2VideoPredictor, or forward_image() for features"
        )

    # ------------------------------------------------------------------ image features
    def forward_image(self, img_batch: torch.Tensor) -> dict:
        """Run the image encoder; the two high-resolution FPN levels are projected by the mask
        decoder's ``conv_s0``/``conv_s1`` once here, as the official does."""
        if img_batch.ndim != 4 or img_batch.shape[1] != 3:
            raise ValueError(f"forward_image expects images [B, 3, H, W], got {tuple(img_batch.shape)}")
        if not self.use_high_res_features_in_sam:
            return self.image_encoder(img_batch)
        projections = {0: self.sam_mask_decoder.conv_s0, 1: self.sam_mask_decoder.conv_s1}
        encoder = self.image_encoder
        if isinstance(encoder, ImageEncoder) and encoder.scalp < len(encoder.neck.convs) - 1:
            # the neck applies conv_s0/conv_s1 itself (composed with its own 1x1 convs)
            return self.image_encoder(img_batch, projections=projections)
        backbone_out = self.image_encoder(img_batch)
        fpn = list(backbone_out["backbone_fpn"])
        fpn[0] = projections[0](fpn[0])
        fpn[1] = projections[1](fpn[1])
        backbone_out["backbone_fpn"] = fpn
        return backbone_out

    def _prepare_backbone_features(self, backbone_out: dict):
        """Flatten the last ``num_feature_levels`` levels to ``(HW, B, C)`` sequences.

        Returns ``(backbone_out, vision_feats, vision_pos_embeds, feat_sizes)``."""
        backbone_out = dict(backbone_out)
        fpn, pos = backbone_out["backbone_fpn"], backbone_out["vision_pos_enc"]
        if len(fpn) != len(pos) or len(fpn) < self.num_feature_levels:
            raise ValueError(
                f"backbone output has {len(fpn)} feature levels and {len(pos)} position encodings; "
                f"need {self.num_feature_levels} of each"
            )
        maps = fpn[-self.num_feature_levels :]
        pos = pos[-self.num_feature_levels :]
        feat_sizes = [(x.shape[-2], x.shape[-1]) for x in pos]
        vision_feats = [x.flatten(2).permute(2, 0, 1) for x in maps]
        vision_pos_embeds = [x.flatten(2).permute(2, 0, 1) for x in pos]
        return backbone_out, vision_feats, vision_pos_embeds, feat_sizes

    # ------------------------------------------------------------------ SAM heads
    def _forward_sam_heads(
        self,
        backbone_features: torch.Tensor,
        point_inputs: dict | None = None,
        mask_inputs: torch.Tensor | None = None,
        high_res_features=None,
        multimask_output: bool = False,
    ) -> SAMHeadsOutput:
        """Prompt encoder + mask decoder on a batch of image embeddings ``[B, C, h, w]``.

        ``point_inputs``: ``{"point_coords": [B, P, 2] pixels in the model's input frame,
        "point_labels": [B, P]}``; ``mask_inputs``: ``[B, 1, H, W]`` logits or binary masks."""
        b, c, h, w = backbone_features.shape
        s = self.sam_image_embedding_size
        if c != self.sam_prompt_embed_dim or h != s or w != s:
            raise ValueError(
                f"backbone features must be [B, {self.sam_prompt_embed_dim}, {s}, {s}] for image_size "
                f"{self.image_size}; got {tuple(backbone_features.shape)}"
            )
        device = backbone_features.device
        if point_inputs is not None:
            coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
            if coords.size(0) != b or labels.size(0) != b:
                raise ValueError(f"point inputs have batch {coords.size(0)}/{labels.size(0)}, features {b}")
        else:
            coords = torch.zeros(b, 1, 2, device=device)
            labels = -torch.ones(b, 1, dtype=torch.int32, device=device)
        mask_prompt = None
        if mask_inputs is not None:
            if mask_inputs.ndim != 4 or tuple(mask_inputs.shape[:2]) != (b, 1):
                raise ValueError(f"mask_inputs must be [{b}, 1, H, W], got {tuple(mask_inputs.shape)}")
            mask_prompt = mask_inputs
            if tuple(mask_inputs.shape[-2:]) != tuple(self.sam_prompt_encoder.mask_input_size):
                mask_prompt = F.interpolate(
                    mask_inputs.float(),
                    size=self.sam_prompt_encoder.mask_input_size,
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )
        sparse, dense = self.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask_prompt)
        low_res_multimasks, ious, sam_tokens, object_score_logits = self.sam_mask_decoder(
            image_embeddings=backbone_features,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,
            high_res_features=high_res_features,
        )
        if self.pred_obj_scores:
            is_obj = object_score_logits > 0
            low_res_multimasks = torch.where(is_obj[:, None, None], low_res_multimasks, NO_OBJ_SCORE)
        low_res_multimasks = low_res_multimasks.float()
        high_res_multimasks = F.interpolate(
            low_res_multimasks, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        token = sam_tokens[:, 0]
        if multimask_output:
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(b, device=device)
            low_res_masks = low_res_multimasks[rows, best].unsqueeze(1)
            high_res_masks = high_res_multimasks[rows, best].unsqueeze(1)
            if sam_tokens.size(1) > 1:
                token = sam_tokens[rows, best]
        else:
            low_res_masks, high_res_masks = low_res_multimasks, high_res_multimasks
        obj_ptr = self.obj_ptr_proj(token)
        if self.pred_obj_scores:
            appearing = object_score_logits.sigmoid() if self.soft_no_obj_ptr else is_obj.float()
            obj_ptr = self._mix_no_obj_ptr(obj_ptr, appearing)
        return SAMHeadsOutput(
            low_res_multimasks, high_res_multimasks, ious, low_res_masks, high_res_masks, obj_ptr, object_score_logits
        )

    def _mix_no_obj_ptr(self, obj_ptr: torch.Tensor, appearing: torch.Tensor) -> torch.Tensor:
        if self.fixed_no_obj_ptr:
            obj_ptr = appearing * obj_ptr
        return obj_ptr + (1 - appearing) * self.no_obj_ptr

    def _use_mask_as_output(self, backbone_features, high_res_features, mask_inputs) -> SAMHeadsOutput:
        """Turn a binary mask prompt directly into output logits (+-10), without SAM's decoder;
        the object pointer still comes from the decoder run on the downsampled mask."""
        scale, bias = 20.0, -10.0
        mask = mask_inputs.float()
        high_res_masks = mask * scale + bias
        low_res_masks = F.interpolate(
            high_res_masks,
            size=(high_res_masks.size(-2) // 4, high_res_masks.size(-1) // 4),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        ious = mask_inputs.new_ones(mask_inputs.size(0), 1).float()
        if self.use_obj_ptrs_in_encoder:
            obj_ptr = self._forward_sam_heads(
                backbone_features, mask_inputs=self.mask_downsample(mask), high_res_features=high_res_features
            ).obj_ptr
        else:
            obj_ptr = torch.zeros(mask_inputs.size(0), self.hidden_dim, device=mask_inputs.device)
        appearing = torch.any(mask_inputs.flatten(1).float() > 0.0, dim=1)[..., None].float()
        object_score_logits = scale * appearing + bias
        if self.pred_obj_scores:
            obj_ptr = self._mix_no_obj_ptr(obj_ptr, appearing)
        return SAMHeadsOutput(
            low_res_masks, high_res_masks, ious, low_res_masks, high_res_masks, obj_ptr, object_score_logits
        )
