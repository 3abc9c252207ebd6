"""``dp-sam2 cache-features``: the command line of the feature cache (:func:`dp_sam2.cache.cache_features`),
run by one process or by each rank under ``torchrun`` (a gloo process group for the run; each rank on its
own GPU when CUDA is available and ``--device`` is not given)."""

from __future__ import annotations

import os


def cache_features_command(args) -> str:
    """Run the cache writer with the parsed ``dp-sam2 cache-features`` arguments; the report line to print."""
    import torch

    from dp_sam2.cache import cache_features
    from dp_sam2.checkpoints.registry import get_spec
    from dp_sam2.checkpoints.resolve import resolve_checkpoint
    from dp_sam2.dist import current_dist, torchrun_process_group

    if args.checkpoint:  # an explicit file must exist, whatever else is given (--random-weights included)
        resolve_checkpoint(args.checkpoint, get_spec(args.obs_encoder).name)
    with torchrun_process_group():
        dist = current_dist()
        device = args.device
        if device is None and dist.world > 1 and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', dist.rank))}"
        result = cache_features(
            args.zarr,
            args.obs_encoder,
            args.checkpoint,
            args.image_size,
            keys=args.keys,
            out=args.out,
            crop_shape=args.crop_shape,
            resize_shape=args.resize_shape,
            batch_size=args.batch_size,
            device=device,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            random_weights=args.random_weights,
            precision=args.precision,
        )
    if dist.rank != 0:
        return f"rank {dist.rank}: encoded {result.computed} frames"
    return str(result) + (f" [rank 0 of {dist.world}]" if dist.world > 1 else "")
