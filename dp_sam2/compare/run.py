"""``dp-sam2 compare``: the arguments and the loop over the grid (cells, shards, merge, latency, report)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from dp_sam2.compare import grid


def add_arguments(p) -> None:
    p.add_argument("--tasks", default=None, help="MetaWorld tasks, comma-separated (with or without -v3)")
    p.add_argument(
        "--encoders",
        default="lowdim,resnet18,sam2_tiny",
        help="lowdim (DP's low-dim U-Net on the full 39-float state), resnet18 (DP's image workspace as shipped), "
        "and SAM 2 short names (sam2_tiny ... sam2.1_large); default lowdim,resnet18,sam2_tiny",
    )
    p.add_argument("--modes", default="frozen,lora,finetune", help="SAM 2 modes (default frozen,lora,finetune)")
    p.add_argument("--seeds", default=None, help="training seeds, comma-separated (default: cpu 0; gpu 0,1,2)")
    p.add_argument("--protocol", default="cpu", choices=sorted(grid.PROTOCOLS), help="cpu (default) or gpu")
    p.add_argument("--dp-root", default=None, help="the Diffusion Policy checkout whose train.py / eval.py run")
    p.add_argument("--out", required=True, help="output folder (results.csv, results.md, results.png, cells/)")
    p.add_argument("--shard", default=None, help="I/N: run every N-th cell from offset I (default: all)")
    p.add_argument("--latency", action="store_true", help="measure latency.csv/.md once (not re-measured)")
    p.add_argument(
        "--merge", nargs="+", default=None, metavar="DIR", help="merge finished cells of other output folders"
    )
    p.add_argument("--python", default=sys.executable, help="the DP environment's Python (default: this one)")
    p.add_argument(
        "--train-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override appended to every train.py command (e.g. for a smoke run)",
    )
    p.add_argument("--dry-run", action="store_true", help="print each cell's train.py command; run nothing")


def _check_run_config(out: Path, protocol: grid.Protocol, extra: list[str]) -> None:
    """One output folder holds one protocol, one camera view (0.3.3 moved the protocols' camera) and one set of
    extra overrides."""
    path = out / "compare.json"
    want = {
        "protocol": protocol.name,
        "camera": protocol.camera,
        "image_size": protocol.image_size,
        "train_override": list(extra),
    }
    if path.is_file():
        have = json.loads(path.read_text())
        if have != want:
            raise ValueError(f"{out} was made with {have}; this run asks for {want}: use another --out")
    else:
        path.write_text(json.dumps(want, indent=2))


def merge_dirs(sources: list[str], out: Path) -> list[str]:
    """Copy the finished cells of ``sources`` (other output folders, e.g. shards run elsewhere) into ``out``
    (checkpoints left behind). A cell already in ``out`` or in two sources is an error; nothing is copied then."""
    from dp_sam2.compare.results import cell_rows, merge_rows

    found = cell_rows(out)
    for src in sources:
        if not Path(src, "cells").is_dir():
            raise FileNotFoundError(f"--merge {src}: not a compare output folder (no cells/ in it)")
        found += [(where, rows) for where, rows in cell_rows(src)]
    merge_rows(found)  # raises on a cell written twice
    copied = []
    for where, _ in found:
        folder = Path(where)
        if folder.parent.parent.resolve() == out.resolve():
            continue
        tmp = out / "cells" / f".{folder.name}.merge-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns("*.ckpt"))
        tmp.rename(out / "cells" / folder.name)
        copied.append(folder.name)
    return copied


def run_latency(args, out: Path, protocol: grid.Protocol) -> str:
    if (out / "latency.csv").is_file():
        return f"latency: {out / 'latency.csv'} exists; not re-measured"
    dims = ",".join(str(d) for d in protocol.down_dims) if protocol.down_dims else "default"
    cmd = [args.python, "-m", "dp_sam2.compare.latency", "--out", str(out), "--image-size", str(protocol.image_size)]
    cmd += ["--ddim-steps", str(protocol.ddim_steps), "--down-dims", dims]
    rc = subprocess.call(cmd, cwd=args.dp_root)
    if rc != 0:
        raise RuntimeError(f"the latency measurement exited with {rc}: {' '.join(cmd)} (cwd {args.dp_root})")
    return f"latency: wrote {out / 'latency.csv'} and {out / 'latency.md'}"


def run(args) -> int:
    from dp_sam2.compare.cells import CellError, Context, is_done, run_cell
    from dp_sam2.compare.report import write_report
    from dp_sam2.compare.results import write_results

    out = Path(args.out).resolve()
    protocol = grid.get_protocol(args.protocol)
    if not (args.tasks or args.latency or args.merge):
        raise ValueError("dp-sam2 compare needs --tasks (the grid), --latency, or --merge DIR ...")
    if (args.tasks or args.latency) and not args.dp_root and not args.dry_run:
        raise ValueError("--dp-root is required: the Diffusion Policy checkout whose train.py and eval.py run")
    out.mkdir(parents=True, exist_ok=True)
    (out / "cells").mkdir(exist_ok=True)
    if args.merge:
        copied = merge_dirs(args.merge, out)
        print(f"merged {len(copied)} cells into {out / 'cells'}")
    if args.latency and not args.dry_run:
        print(run_latency(args, out, protocol))
    failed = []
    if args.tasks:
        seeds = grid.parse_seeds(args.seeds) if args.seeds is not None else list(protocol.default_seeds)
        cells = grid.expand_grid(args.tasks, grid.parse_settings(args.encoders, args.modes), seeds)
        shard = grid.parse_shard(args.shard)
        mine = grid.shard_cells(cells, shard)
        print(f"compare: {len(cells)} cells in the grid, {len(mine)} in shard {shard[0]}/{shard[1]} ({protocol.name})")
        if args.dry_run:
            return _dry_run(mine, protocol, args.train_override)
        _check_run_config(out, protocol, args.train_override)
        ctx = Context(args.dp_root, out, protocol, args.python, list(args.train_override), {"WANDB_MODE": "disabled"})
        for i, cell in enumerate(mine, 1):
            if is_done(ctx, cell):
                print(f"[{i}/{len(mine)}] {cell.name}: done, skipped")
                continue
            print(f"[{i}/{len(mine)}] {cell.name}: running")
            try:
                row = run_cell(ctx, cell)
            except (CellError, ValueError, KeyError, OSError) as err:  # this cell has no row; the grid goes on
                failed.append(cell.name)
                print(f"[{i}/{len(mine)}] {cell.name}: FAILED: {err}", file=sys.stderr)
                continue
            print(
                f"[{i}/{len(mine)}] {cell.name}: success_last {row['success_last']:.2f}, "
                f"score_dp3 {row['score_dp3']:.2f}"
            )
            rows = write_results(out)
            write_report(out, rows, picture=False, title=_title(protocol))
    rows = write_results(out)
    written = write_report(out, rows, picture=True, title=_title(protocol))
    print(f"compare: {len(rows)} finished cells in {out / 'results.csv'}; " + ", ".join(str(w) for w in written))
    if failed:
        print(
            f"compare: {len(failed)} cells failed (their attempts are in cells/.<cell>.tmp): {', '.join(failed)}",
            file=sys.stderr,
        )
        return 1
    return 0


def _title(protocol: grid.Protocol) -> str:
    return f"dp-sam2 compare, {protocol.name} protocol"


def _dry_run(cells, protocol: grid.Protocol, extra: list[str]) -> int:
    for cell in cells:
        paths = grid.CellPaths(
            run_dir=f"<out>/cells/.{cell.name}.tmp/train",
            zarr=f"<out>/demos/{cell.task}.zarr",
            sam2_checkpoint="<weights>" if cell.setting.is_sam2 else None,
            feature_cache=f"<out>/demos/{cell.task}.zarr" if cell.mode == "frozen" else None,
            dataset_target="<task dataset>" if cell.mode == "frozen" else None,
        )
        print(f"{cell.name}: python train.py " + " ".join(grid.train_overrides(cell, protocol, paths, extra)))
        steps = protocol.budget(cell.setting.kind).steps
        if steps > 0:
            print(f"  (a budget of about {steps:,} steps: the real run sets num_epochs / rollout_every from the demos)")
    return 0
