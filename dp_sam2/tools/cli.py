"""The ``dp-sam2`` command line.

Subcommands: ``demo``, ``download``, ``segment``, ``track``, ``viz``, ``cache-features``, ``info``.
Every subcommand imports what it needs when it runs, so ``dp-sam2 --help`` is instant.
User errors (bad arguments, missing files, failed downloads) print one clear message on stderr
and exit 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dp_sam2.tools.arg_types import box_xyxy, hw_pair, image_size_arg, point_fxy, point_xy


# --------------------------------------------------------------------------- commands
def cmd_demo(args) -> int:
    from dp_sam2.tools.demo import run_demo

    written = run_demo(
        args.out, steps=args.steps, quick=args.quick, device=args.device, seed=args.seed, offline=args.offline
    )
    print(f"dp-sam2 demo wrote {len(written)} files to {Path(args.out).resolve()}:")
    for path, what in written:
        print(f"  {Path(path).resolve()}  - {what}")
    return 0


def cmd_download(args) -> int:
    from dp_sam2.checkpoints.download import download

    results = download(
        args.names,
        dest=args.dest,
        source=args.source,
        base_url=args.base_url,
        retries=args.retries,
        verify=not args.no_verify,
        force=args.force,
        progress=not args.no_progress,
    )
    for res in results:
        print(f"{res.spec.name}: {res.status} {res.path} ({res.nbytes / 2**20:.1f} MiB)")
    return 0


def cmd_segment(args) -> int:
    from dp_sam2.tools.commands import segment_image

    out = segment_image(
        args.image,
        point=args.point,
        box=args.box,
        model=args.model,
        checkpoint=args.checkpoint,
        out=args.out,
        device=args.device,
        image_size=args.image_size,
        random_weights=args.random_weights,
    )
    print(f"wrote {out.path} (score {out.score:.3f}, {out.area} pixels = {100 * out.fraction:.0f}% of the image)")
    from dp_sam2.tools.commands import report_lines

    print("\n".join(report_lines(out)))
    return 0


def cmd_track(args) -> int:
    from dp_sam2.tools.commands import track_video

    result = track_video(
        args.video,
        point=args.point,
        model=args.model,
        checkpoint=args.checkpoint,
        out_dir=args.out,
        device=args.device,
        image_size=args.image_size,
        max_frames=args.max_frames,
        random_weights=args.random_weights,
    )
    print(f"wrote {len(result.paths)} files to {Path(args.out).resolve()}: {result.summary()}")
    for p in result.paths:
        print(f"  {p}")
    from dp_sam2.tools.commands import report_lines

    print("\n".join(report_lines(result)))
    return 0


def cmd_viz(args) -> int:
    from dp_sam2.tools.commands import visualize_features

    out = visualize_features(
        args.image,
        obs_encoder=args.obs_encoder,
        checkpoint=args.checkpoint,
        out=args.out,
        image_size=args.image_size,
        device=args.device,
        random_weights=args.random_weights,
    )
    print(f"wrote {out}" + (" (RANDOM weights: the features are not a result)" if out.random_weights else ""))
    return 0


def cmd_cache_features(args) -> int:
    from dp_sam2.tools.cache_features import cache_features_command

    print(cache_features_command(args))
    return 0


def cmd_info(args) -> int:
    from dp_sam2.tools.info import info_lines

    print("\n".join(info_lines()))
    return 0


# --------------------------------------------------------------------------- parser
def _add_model_args(p, default_model: str, what: str = "--model") -> None:
    p.add_argument(
        what,
        default=default_model,
        help=f"registry short name (sam2_tiny ... sam2.1_large) or official config name (default {default_model})",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="official .pt file (default: checkpoints/<official file name>, looked up in "
        "$DP_SAM2_CHECKPOINT_DIR, the DP repo root, the current directory and the user cache)",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="use random weights when no checkpoint is found (pictures are then meaningless and say so; for "
        "testing). Never replaces an explicit --checkpoint: a missing one is an error",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available, else CPU)")


# --------------------------------------------------------------------------- metaworld-demos (issue 24)
def cmd_metaworld_demos(args) -> int:
    from dp_sam2.metaworld.demos import collect_demos

    summary = collect_demos(
        args.task,
        args.episodes,
        args.out,
        image_size=args.image_size,
        camera=args.camera,
        seed=args.seed,
        max_steps=args.max_steps,
        overwrite=args.overwrite,
    )
    print(
        f"dp-sam2 metaworld-demos wrote {summary['episodes']} expert episodes ({summary['steps']} steps, "
        f"{summary['attempts']} attempts) to {Path(summary['path']).resolve()}"
    )
    return 0


def _add_metaworld_demos(sub) -> None:
    p = sub.add_parser(
        "metaworld-demos",
        help="MetaWorld scripted-expert demonstrations as a Diffusion Policy replay buffer (zarr)",
        description="Rolls out MetaWorld's scripted expert for --task and writes the successful episodes "
        "as DP's replay buffer (data/img, data/agent_pos, data/state, data/action, meta/episode_ends) for "
        'task=metaworld / task=metaworld_lowdim. Needs the extra: pip install "dp-sam2[metaworld]".',
    )
    p.add_argument("--task", required=True, help="a MetaWorld v3 task, with or without -v3 (e.g. reach, pick-place-v3)")
    p.add_argument("--episodes", type=int, required=True, help="successful episodes to keep")
    p.add_argument("--image-size", type=int, default=128, help="square image size in pixels (default 128)")
    p.add_argument(
        "--camera",
        default="corner2",
        help="corner, corner2 (default), corner3, corner4, topview, ...; corner2_dp3: corner2 closer, as DP3's code",
    )
    p.add_argument("--seed", type=int, default=0, help="start states come from this seed (same seed, same file)")
    p.add_argument("--out", required=True, help="the buffer to write, e.g. data/metaworld/reach.zarr")
    p.add_argument("--max-steps", type=int, default=500, help="steps per attempt before it counts as failed")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_metaworld_demos)


# --------------------------------------------------------------------------- compare (issue 25)
def cmd_compare(args) -> int:
    from dp_sam2.compare.run import run

    return run(args)


def _add_compare(sub) -> None:
    from dp_sam2.compare.run import add_arguments  # argparse only: nothing heavy

    p = sub.add_parser(
        "compare",
        help="compare encoders closed-loop on MetaWorld with DP's own train.py and eval.py",
        description="Runs the grid tasks x encoder settings x seeds (demos collected once per task; DP's "
        "unchanged train.py and eval.py in --dp-root), writing results.csv, results.md and results.png "
        "to --out; resumable, shardable (--shard I/N), mergeable (--merge); --latency measures the "
        "policy-call latency once. See docs/compare.md.",
    )
    add_arguments(p)
    p.set_defaults(func=cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    from dp_sam2.checkpoints.registry import DEFAULT_MODEL

    parser = argparse.ArgumentParser(
        prog="dp-sam2",
        description="SAM 2 as a vision encoder for Diffusion Policy: demo, checkpoints, debugging pictures, "
        "feature cache.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="end-to-end demo: encoder, replay buffer, feature cache, diffusion head training, pictures",
        description=f"Builds the {DEFAULT_MODEL} obs encoder (official weights if found; else downloads "
        f"them, as `dp-sam2 download {DEFAULT_MODEL}`; without network, or with --offline, "
        "random weights with a warning), writes a synthetic Push-T-style zarr replay "
        "buffer, caches its features, trains a small diffusion action head on them and "
        "writes "
        "pictures (loss curve, mask overlay, video track, PCA of the features) to --out.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--steps", type=int, default=None, help="training steps of the action head (default 200; 20 with --quick)"
    )
    p.add_argument("--quick", action="store_true", help="a smaller replay buffer and fewer steps (seconds, for tests)")
    p.add_argument("--device", default=None, help="default: CUDA when available, else CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--offline",
        action="store_true",
        help=f"never download: without a local {DEFAULT_MODEL} checkpoint, use random weights",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "download",
        help="download official checkpoints by name (resumable, verified)",
        description="Downloads official SAM 2 checkpoints by short name (sam2_tiny, sam2_small, "
        "sam2_base_plus, sam2_large, sam2.1_tiny ... sam2.1_large), config name or "
        "official file name (sam2_hiera_large.pt). Resumes a partial download, checks "
        "that the file loads into its config, then renames it into place.",
    )
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument(
        "--dest",
        default=None,
        help="folder (default: checkpoints/ under the Diffusion Policy repo root when run inside one, "
        "else the user cache $DP_SAM2_CACHE or ~/.cache/dp_sam2)",
    )
    p.add_argument(
        "--source",
        choices=("official", "huggingface"),
        default="official",
        help="official: Meta's file host (or --base-url); huggingface: the hub repos facebook/sam2-hiera-* "
        "and facebook/sam2.1-hiera-* via huggingface_hub (honours HF_ENDPOINT, HF_HUB_OFFLINE and "
        'its cache; pip install "dp-sam2[huggingface]")',
    )
    p.add_argument(
        "--base-url",
        default=None,
        help="a mirror of the official host serving the official file names (default: dl.fbaipublicfiles.com)",
    )
    p.add_argument("--retries", type=int, default=3, help="automatic resumes after a broken connection (default 3)")
    p.add_argument("--force", action="store_true", help="download again even if the file exists")
    p.add_argument("--no-verify", action="store_true", help="skip checking the file against its config")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser(
        "segment",
        help="mask overlay of one image from a point (and/or box) prompt",
        description="Runs the SAM 2 image predictor on IMAGE with a positive point (and an "
        "optional box) and writes the best mask as an overlay PNG.",
    )
    p.add_argument("image")
    p.add_argument("--point", type=point_xy, default=None, help="X,Y in pixels (positive click)")
    p.add_argument("--box", type=box_xyxy, default=None, help="x0,y0,x1,y1 in pixels")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument(
        "--image-size",
        type=image_size_arg,
        default=None,
        help="model input size, multiple of 32 (default: the config's 1024)",
    )
    _add_model_args(p, DEFAULT_MODEL)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser(
        "track",
        help="track an object through a video from one click",
        description="Runs the SAM 2 video predictor on a video file (needs PyAV) or a folder of "
        "JPEG/PNG frames, prompted with one positive click, and writes an overlay "
        "per frame plus a contact sheet to --out.",
    )
    p.add_argument("video", metavar="VIDEO_OR_FOLDER")
    p.add_argument("--point", type=point_fxy, required=True, help="FRAME,X,Y: frame index and pixel position")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--image-size",
        type=image_size_arg,
        default=None,
        help="model input size, multiple of 32 (default: the config's 1024)",
    )
    p.add_argument("--max-frames", type=int, default=None, help="only the first N frames")
    _add_model_args(p, DEFAULT_MODEL)
    p.set_defaults(func=cmd_track)

    p = sub.add_parser(
        "viz",
        help="PCA picture of what the obs encoder sees (stride-16 features)",
        description="Encodes IMAGE with the obs encoder's backbone (the stride-16 SAM 2 feature "
        "map, no_mem_embed included) and writes the image beside a PCA colouring of "
        "the features.",
    )
    p.add_argument("image")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument(
        "--image-size", type=image_size_arg, default=None, help="encoder input size (default: the registry's obs size)"
    )
    _add_model_args(p, DEFAULT_MODEL, what="--obs-encoder")
    p.set_defaults(func=cmd_viz)

    p = sub.add_parser(
        "cache-features",
        help="precompute frozen SAM 2 features of a zarr replay buffer",
        description="Encodes every frame of the rgb keys of a Diffusion Policy zarr replay buffer "
        "with a frozen SAM 2 backbone and stores the float16 features (one chunk per "
        "frame) in a zarr group keyed by model, checkpoint digest and image size. "
        "Resumable; batched; runs sharded under torchrun.",
    )
    p.add_argument("--zarr", required=True, help="the replay buffer (data/<key>, meta/episode_ends)")
    p.add_argument("--keys", nargs="+", default=None, help="rgb arrays under data/ (default: every (N,H,W,3) array)")
    p.add_argument("--out", default=None, help="zarr store for the cache (default: inside --zarr)")
    p.add_argument(
        "--image-size", type=image_size_arg, default=None, help="encoder input size (default: the registry's obs size)"
    )
    p.add_argument(
        "--crop-shape",
        type=hw_pair,
        default=None,
        help="H,W centre crop before the resize (as policy.obs_encoder.crop_shape)",
    )
    p.add_argument(
        "--resize-shape",
        type=hw_pair,
        default=None,
        help="H,W resize before the crop (as policy.obs_encoder.resize_shape)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="backbone precision, as policy.obs_encoder.precision (default fp32)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--overwrite", action="store_true", help="recompute everything")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_args(p, "sam2_large", what="--obs-encoder")
    p.set_defaults(func=cmd_cache_features)

    p = sub.add_parser(
        "info",
        help="versions, device, connected-components implementation, checkpoints, Hydra plugin",
        description="Prints versions, the default device, which connected-components implementation "
        "is active, which checkpoints are found and where, and whether Hydra sees the "
        "obs_encoder group through dp_sam2's search-path plugin.",
    )
    p.set_defaults(func=cmd_info)
    _add_compare(sub)
    _add_metaworld_demos(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, OSError, RuntimeError, ImportError) as err:
        if args.debug:
            raise
        from dp_sam2.tools.commands import explain_error

        print(f"dp-sam2 {args.command}: error: {explain_error(err, args)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
