"""LeRobot plugin: ``lerobot-train --policy.type=sam2_diffusion ...`` (LeRobot's diffusion policy with
SAM 2 as its vision encoder, from dp_sam2).

LeRobot imports every installed distribution whose name starts with ``lerobot_policy_`` at
start-up (``lerobot.utils.import_utils.register_third_party_plugins``); importing this package
registers the config class, and LeRobot finds ``SAM2DiffusionPolicy`` in the sibling
``modeling_sam2_diffusion`` module and ``make_sam2_diffusion_pre_post_processors`` in
``processor_sam2_diffusion`` by its naming convention. The modeling module (torch models) is only
imported when a policy is built.
"""

from .configuration_sam2_diffusion import SAM2DiffusionConfig

__version__ = "0.1.0"
__all__ = ["SAM2DiffusionConfig", "SAM2DiffusionPolicy", "make_sam2_diffusion_pre_post_processors"]


def __getattr__(name: str):
    if name == "SAM2DiffusionPolicy":
        from .modeling_sam2_diffusion import SAM2DiffusionPolicy

        return SAM2DiffusionPolicy
    if name == "make_sam2_diffusion_pre_post_processors":
        from .processor_sam2_diffusion import make_sam2_diffusion_pre_post_processors

        return make_sam2_diffusion_pre_post_processors
    raise AttributeError(f"module 'lerobot_policy_sam2' has no attribute {name!r}")
