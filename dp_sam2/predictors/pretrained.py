"""``from_pretrained`` of the predictors and the mask generator: a model by hub id
(``"facebook/sam2-hiera-large"``), short name (``"sam2.1_tiny"``) or official config name, with
its official checkpoint: found locally first (:func:`dp_sam2.checkpoints.resolve.find_weights`),
else downloaded from ``source`` (``"official"`` or ``"huggingface"``) into the default folder of
``dp-sam2 download``."""

from __future__ import annotations


def build_pretrained(model_id_or_name: str, *, video: bool = False, **kwargs):
    """A SAM2Base (or, with ``video=True``, a SAM2VideoPredictor) with its official checkpoint.

    Keyword arguments: ``ckpt_path`` (or ``checkpoint``; skips the download: absolute as given, a bare or
    relative name looked up as the obs encoder does, :func:`dp_sam2.checkpoints.resolve.resolve_checkpoint`),
    ``source`` (``"official"``, default, or ``"huggingface"``), ``image_size``, and the builder's
    own (``device``, ``mode``, ``hydra_overrides_extra``, ``apply_postprocessing``, ...)."""
    from dp_sam2.checkpoints.download import check_source, fetch_pretrained
    from dp_sam2.checkpoints.registry import get_spec
    from dp_sam2.checkpoints.resolve import resolve_checkpoint
    from dp_sam2.encoders.sam2.build import build_sam2, build_sam2_video_predictor

    spec = get_spec(model_id_or_name)
    ckpt = kwargs.pop("ckpt_path", None)
    alias = kwargs.pop("checkpoint", None)
    if ckpt is not None and alias is not None:
        raise ValueError("give the checkpoint as ckpt_path= or checkpoint=, not both")
    ckpt = ckpt if ckpt is not None else alias
    source = check_source(kwargs.pop("source", "official"))
    if ckpt is None:
        ckpt = fetch_pretrained(spec.name, source=source)
    else:  # the error names every place tried and `dp-sam2 download <this model>`
        ckpt = resolve_checkpoint(ckpt, spec.name)
    overrides = list(kwargs.pop("hydra_overrides_extra", ()))
    image_size = kwargs.pop("image_size", None)
    if image_size is not None:
        overrides.append(f"++model.image_size={int(image_size)}")
    builder = build_sam2_video_predictor if video else build_sam2
    return builder(spec.config, ckpt, hydra_overrides_extra=overrides, **kwargs)
