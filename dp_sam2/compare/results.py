"""results.csv: its columns, the numbers read from DP's logs, and merging cells and shards.

Each finished cell holds its row in ``cells/<cell>/result.json`` (written before the cell folder is
renamed into place); ``results.csv`` is rebuilt from them after every cell, so it is always the set of
finished cells. Rows from several output folders (shards run on other machines) merge into one file;
a cell present twice is an error, never an overwrite.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

COLUMNS = (
    "task",
    "encoder",
    "mode",
    "weights",
    "image_size",
    "seed",
    "n_demos",
    "train_steps",
    "wall_s",
    "success_last",
    "score_dp3",
    "latency_ms",
    "trainable_params",
)
KEY = ("task", "encoder", "mode", "seed")
TOP_K = 5


def read_dp_log(path: str | os.PathLike) -> list[dict]:
    """The JSON lines DP's ``JsonLogger`` wrote (``logs.json.txt``); a torn last line (killed run) is skipped."""
    lines = Path(path).read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON: {line[:80]!r}") from None
    return out


def periodic_scores(log: list[dict]) -> list[tuple[int, float]]:
    """``(epoch, test_mean_score)`` of every rollout DP logged after training started (epoch > 0: DP
    also rolls out the untrained policy at epoch 0, which is not a periodic evaluation)."""
    return [
        (int(r["epoch"]), float(r["test_mean_score"]))
        for r in log
        if "test_mean_score" in r and int(r.get("epoch", 0)) > 0
    ]


def score_dp3(scores: list[float], k: int = TOP_K) -> tuple[float, int]:
    """The 3D Diffusion Policy paper's metric: the mean of the ``k`` best periodic evaluations (of all of
    them when fewer exist). Returns ``(score, how many were averaged)``."""
    if not scores:
        raise ValueError("score_dp3 needs at least one periodic evaluation (test_mean_score after epoch 0), got none")
    best = sorted((float(s) for s in scores), reverse=True)[:k]
    return sum(best) / len(best), len(best)


def train_steps(log: list[dict]) -> int:
    """Optimizer steps DP ran: its last logged ``global_step`` + 1 (DP counts from 0)."""
    steps = [int(r["global_step"]) for r in log if "global_step" in r]
    if not steps:
        raise ValueError("DP's log holds no global_step: did training run?")
    return max(steps) + 1


def check_row(row: dict) -> dict:
    missing = [c for c in COLUMNS if c not in row]
    extra = [c for c in row if c not in COLUMNS]
    if missing or extra:
        raise ValueError(f"a results row needs exactly the columns {list(COLUMNS)}; missing {missing}, extra {extra}")
    s = float(row["success_last"])
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"success_last must be in [0, 1], got {s!r} ({row_key(row)})")
    return row


def row_key(row: dict) -> tuple[str, str, str, int]:
    return (str(row["task"]), str(row["encoder"]), str(row["mode"]), int(row["seed"]))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.0f}"
    return str(v)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in sorted(rows, key=row_key):
        w.writerow({c: _fmt(check_row(row)[c]) for c in COLUMNS})
    return buf.getvalue()


def read_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: expected the columns {list(COLUMNS)}, found {reader.fieldnames}")
        return [dict(r) for r in reader]


def atomic_write(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def merge_rows(sources: list[tuple[str, list[dict]]]) -> list[dict]:
    """Rows of several sources (``(where, rows)``) as one list; a cell in two sources (or twice in one) is an error."""
    seen: dict[tuple, str] = {}
    out = []
    for where, rows in sources:
        for row in rows:
            key = row_key(row)
            if key in seen:
                raise ValueError(
                    f"cell task={key[0]} encoder={key[1]} mode={key[2]} seed={key[3]} was written twice: in "
                    f"{seen[key]} and in {where}; keep one (remove the other cell folder or row) and merge again"
                )
            seen[key] = where
            out.append(row)
    return out


def cell_rows(out_dir: str | os.PathLike) -> list[tuple[str, list[dict]]]:
    """``(folder, [row])`` of every finished cell under ``out_dir/cells``."""
    cells = Path(out_dir) / "cells"
    if not cells.is_dir():
        return []
    found = []
    for d in sorted(cells.iterdir()):
        if d.name.startswith(".") or not (d / "result.json").is_file():
            continue
        found.append((str(d), [check_row(json.loads((d / "result.json").read_text())["row"])]))
    return found


def write_results(out_dir: str | os.PathLike, extra_sources: list[tuple[str, list[dict]]] = ()) -> list[dict]:
    """Rebuild ``out_dir/results.csv`` from its finished cells (plus rows merged from elsewhere)."""
    rows = merge_rows(cell_rows(out_dir) + list(extra_sources))
    atomic_write(Path(out_dir) / "results.csv", to_csv(rows))
    return rows
