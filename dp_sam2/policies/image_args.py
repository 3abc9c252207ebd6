"""The image kwargs of DP's hybrid policies, applied to SAM2ObsEncoder instead of robomimic's encoder.

* ``crop_shape: [h, w]``: the encoder's crop for every camera (before the resize to ``image_size``), random in
  training, centre in eval (robomimic's crop with ``eval_fixed_crop: true``); ``null``: no crop. A non-null
  ``policy.obs_encoder.crop_shape`` must equal it (an error names both): one crop, set in one place.
* ``eval_fixed_crop: false`` (robomimic: random crops in eval too) is accepted with a warning:
  SAM2ObsEncoder always crops at the centre in eval.
* ``obs_encoder_group_norm`` (robomimic: GroupNorm for BatchNorm): either value, no effect (SAM 2 has no BatchNorm).
"""

from __future__ import annotations

import warnings


def apply_hybrid_image_args(encoder, crop_shape=None, obs_encoder_group_norm=False, eval_fixed_crop=False) -> str:
    """Set ``encoder``'s crop from the hybrid kwargs; returns a one-line account of what they became."""
    from dp_sam2.encoders.obs.encoder import SAM2ObsEncoder
    from dp_sam2.encoders.obs.inputs import per_key_hw

    if not isinstance(encoder, SAM2ObsEncoder):
        raise TypeError(
            "the hybrid policy's crop_shape is applied to SAM2ObsEncoder; policy.obs_encoder built a "
            f"{type(encoder).__name__} (select it with +sam2_policy@policy=<model>)"
        )
    wanted = per_key_hw(crop_shape, encoder.keys.rgb, "policy.crop_shape")
    clash = {k: v for k, v in encoder.crop_shape.items() if v is not None and v != wanted[k]}
    if clash:
        key, got = next(iter(clash.items()))
        raise ValueError(
            f"policy.crop_shape is {_show(wanted[key])} but policy.obs_encoder.crop_shape is {_show(got)} "
            f"(for {key!r}): in a hybrid workspace policy.crop_shape sets the SAM 2 encoder's crop; set only one "
            "of them, or both to the same value"
        )
    encoder.crop_shape = wanted
    encoder._check_crops()
    crop = wanted[encoder.keys.rgb[0]] if encoder.keys.rgb else None
    if crop is None:
        text = "crop_shape null: no crop"
    elif encoder.random_crop:
        text = f"crop_shape {_show(crop)}: random crop in training, centre crop in eval"
    else:
        text = f"crop_shape {_show(crop)}: centre crop always (policy.obs_encoder.random_crop is false)"
    if not eval_fixed_crop and crop is not None:
        warnings.warn(
            "eval_fixed_crop is false: DP's robomimic encoder would crop at random in eval too; "
            "SAM2ObsEncoder crops at the centre in eval (what eval_fixed_crop: true does)",
            stacklevel=3,
        )
        text += " (eval_fixed_crop false: still centre in eval)"
    return text + f"; obs_encoder_group_norm {bool(obs_encoder_group_norm)}: no effect (SAM 2 has no BatchNorm)"


def _show(hw) -> str:
    return "null" if hw is None else f"[{hw[0]}, {hw[1]}]"
