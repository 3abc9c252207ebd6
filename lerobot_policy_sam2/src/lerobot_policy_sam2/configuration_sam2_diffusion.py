"""``--policy.type=sam2_diffusion``: LeRobot's diffusion policy with SAM 2 as its vision encoder.

Every field of LeRobot's ``DiffusionConfig`` keeps its meaning (U-Net, noise scheduler, horizon,
``n_obs_steps``, crops, optimizer presets), except the ResNet ones, which are fixed here:

* ``vision_backbone`` is ``"sam2"`` (choose the model with ``sam2_model``);
* ``pretrained_backbone_weights`` is ``None`` (the SAM 2 file is ``sam2_checkpoint``);
* ``use_separate_rgb_encoder_per_camera`` is ``False`` (one SAM 2 backbone serves every camera;
  each camera has its own pooling head);
* ``use_group_norm`` is ``False`` (Hiera has no BatchNorm);
* ``spatial_softmax_num_keypoints`` is the keypoint count of ``pooling="spatial_softmax"``.

Images reach the policy ImageNet-normalised (``normalization_mapping["VISUAL"]`` is
``MEAN_STD``, and the processor always uses ImageNet's mean/std for cameras): SAM 2's pixel
mean/std are ImageNet's, so they are only resized to ``image_size`` before the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

from lerobot.configs import NormalizationMode, PreTrainedConfig
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

# DiffusionConfig's ResNet fields and the only value each may take here.
FIXED_FIELDS = {
    "vision_backbone": ("sam2", "choose the SAM 2 model with --policy.sam2_model=<name>, e.g. sam2_large"),
    "pretrained_backbone_weights": (None, "the SAM 2 file is --policy.sam2_checkpoint (default: its official name)"),
    "use_separate_rgb_encoder_per_camera": (False, "one SAM 2 backbone serves every camera; each has its own head"),
    "use_group_norm": (False, "Hiera has no BatchNorm to replace"),
}


@PreTrainedConfig.register_subclass("sam2_diffusion")
@dataclass
class SAM2DiffusionConfig(DiffusionConfig):
    """LeRobot's ``DiffusionConfig`` plus the SAM 2 encoder's settings.

    Args (beyond ``DiffusionConfig``'s):
        sam2_model: registry short name (``sam2_tiny`` ... ``sam2_large``, ``sam2.1_*``) or an
            official config name.
        sam2_checkpoint: the official ``.pt``; ``None`` means ``checkpoints/<official file name>``.
            A relative path is looked up as dp_sam2 does: ``$DP_SAM2_CHECKPOINT_DIR``, the DP repo
            root, the current directory, the user cache (where ``dp-sam2 download`` puts it).
        image_size: SAM 2 input side (a multiple of 32); ``None``: 224 for tiny/small/base+, 256
            for large. Cameras are resized (after LeRobot's optional resize/crop) to it.
        pooling: ``attention`` (default), ``spatial_softmax`` or ``mean``; one head per camera.
        feature_dim: each camera's feature size fed to the U-Net's conditioning.
        freeze / trainable_blocks / lora_rank / lora_alpha / activation_checkpointing: which
            backbone weights train (see ``dp_sam2.encoders.obs.finetune``).
        backbone_lr_scale: the trainable backbone parameters get ``optimizer_lr * backbone_lr_scale``.
        precision: ``fp32`` or ``bf16`` (the backbone runs under ``torch.autocast(bfloat16)``).
    """

    sam2_model: str = "sam2_large"
    sam2_checkpoint: str | None = None
    image_size: int | None = None
    pooling: str = "attention"
    feature_dim: int = 256
    freeze: bool = True
    trainable_blocks: int | None = None
    lora_rank: int = 0
    lora_alpha: float | None = None
    activation_checkpointing: bool = False
    backbone_lr_scale: float = 0.1
    precision: str = "fp32"

    # DiffusionConfig's ResNet fields, fixed (see FIXED_FIELDS).
    vision_backbone: str = "sam2"
    pretrained_backbone_weights: str | None = None
    use_separate_rgb_encoder_per_camera: bool = False

    def __post_init__(self):
        for name, (value, why) in FIXED_FIELDS.items():
            if getattr(self, name) != value:
                raise ValueError(
                    f"sam2_diffusion has no ResNet: {name} must stay {value!r}, got {getattr(self, name)!r} ({why})"
                )
        # DiffusionConfig's own checks (scheduler, prediction type, crops, horizon) apply as they are;
        # the only one that does not is its ResNet-name check, so it sees a ResNet name while it runs.
        self.vision_backbone = "resnet18"
        try:
            super().__post_init__()
        finally:
            self.vision_backbone = "sam2"
        self._check_sam2_fields()

    def _check_sam2_fields(self) -> None:
        from dp_sam2.checkpoints.registry import get_spec
        from dp_sam2.encoders.obs.heads import HEADS
        from dp_sam2.encoders.obs.inputs import check_image_size
        from dp_sam2.encoders.sam2.precision import check_precision

        spec = get_spec(self.sam2_model)  # ValueError listing the known names
        self.sam2_model = spec.name
        if self.image_size is not None:  # null: the model's default (224, or 256 for large)
            check_image_size(self.image_size, spec)
        if self.pooling not in HEADS:
            raise ValueError(f"pooling must be one of {', '.join(HEADS)}; got {self.pooling!r}")
        if isinstance(self.feature_dim, bool) or not isinstance(self.feature_dim, int) or self.feature_dim <= 0:
            raise ValueError(f"feature_dim must be a positive int, got {self.feature_dim!r}")
        if not float(self.backbone_lr_scale) >= 0:
            raise ValueError(f"backbone_lr_scale must be >= 0, got {self.backbone_lr_scale!r}")
        check_precision(self.precision)
        self.finetune_config()  # freeze / LoRA / trainable_blocks combinations
        visual = self.normalization_mapping.get("VISUAL")
        if visual not in (NormalizationMode.MEAN_STD, "MEAN_STD"):
            raise ValueError(
                "sam2_diffusion expects ImageNet-normalised images (SAM 2's mean/std): "
                f"normalization_mapping VISUAL must be MEAN_STD, got {visual!r}"
            )

    def finetune_config(self):
        from dp_sam2.encoders.obs.finetune import FinetuneConfig

        return FinetuneConfig(
            bool(self.freeze),
            self.trainable_blocks,
            int(self.lora_rank),
            self.lora_alpha,
            bool(self.activation_checkpointing),
        )

    @property
    def sam2_image_size(self) -> int:
        from dp_sam2.checkpoints.registry import get_spec

        return self.image_size if self.image_size is not None else get_spec(self.sam2_model).obs_image_size

    def validate_features(self) -> None:
        if not self.image_features:
            raise ValueError(
                "sam2_diffusion encodes camera images with SAM 2, but the inputs have no image feature "
                "(observation.images.*); use --policy.type=diffusion for state-only data"
            )
        super().validate_features()
