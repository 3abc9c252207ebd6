"""The markdown table and the picture, both made from results.csv's rows through :func:`summarize`, so
they show the same numbers. SAM 2 rows with ``weights=random`` are labelled "random weights" in both.
matplotlib is needed only for the picture (``pip install matplotlib``, or the ``test`` extra)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from dp_sam2.compare.grid import MODE_OF


@dataclass(frozen=True)
class Summary:
    """One task x encoder setting, over its seeds."""

    task: str
    encoder: str
    mode: str
    weights: str
    seeds: tuple[int, ...]
    success: tuple[float, ...]  # success_last per seed, in seed order
    score_dp3: tuple[float, ...]
    train_steps: tuple[int, ...]
    wall_s: tuple[float, ...]
    latency_ms: tuple[float, ...]
    trainable_params: tuple[int, ...]

    @property
    def label(self) -> str:
        name = self.encoder if self.encoder in MODE_OF else f"{self.encoder} {self.mode}"
        return f"{name} (random weights)" if self.weights == "random" else name

    @property
    def success_mean(self) -> float:
        return statistics.fmean(self.success)

    @property
    def success_std(self) -> float:
        return statistics.pstdev(self.success) if len(self.success) > 1 else 0.0


def _order(encoder: str, mode: str) -> tuple:
    rank = {"lowdim": 0, "resnet18": 1}.get(encoder, 2)
    return (rank, encoder, {"frozen": 0, "lora": 1, "finetune": 2}.get(mode, 3))


def summarize(rows: list[dict]) -> list[Summary]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["encoder"], r["mode"]), []).append(r)
    out = []
    for (task, enc, mode), rs in groups.items():
        rs = sorted(rs, key=lambda r: int(r["seed"]))
        weights = {str(r["weights"]) for r in rs}
        if len(weights) != 1:
            raise ValueError(
                f"{task} {enc} {mode}: seeds with different weights {sorted(weights)}; compare like with like"
            )
        out.append(
            Summary(
                task=task,
                encoder=enc,
                mode=mode,
                weights=weights.pop(),
                seeds=tuple(int(r["seed"]) for r in rs),
                success=tuple(float(r["success_last"]) for r in rs),
                score_dp3=tuple(float(r["score_dp3"]) for r in rs),
                train_steps=tuple(int(r["train_steps"]) for r in rs),
                wall_s=tuple(float(r["wall_s"]) for r in rs),
                latency_ms=tuple(float(r["latency_ms"]) for r in rs),
                trainable_params=tuple(int(r["trainable_params"]) for r in rs),
            )
        )
    return sorted(out, key=lambda s: (s.task, *_order(s.encoder, s.mode)))


MD_HEADER = (
    "| task | encoder | seeds | success_last | score_dp3 | train steps | wall (min) | latency (ms) | trainable params |"
)


def markdown_table(rows: list[dict], title: str = "") -> str:
    """One line per task x encoder setting: success_last mean ± std over seeds (and each seed's value),
    score_dp3's mean, and the means of the rest."""
    lines = [f"### {title}", ""] if title else []
    lines += [MD_HEADER, "|" + "---|" * 9]
    for s in summarize(rows):
        per_seed = ", ".join(f"{v:.2f}" for v in s.success)
        lines.append(
            f"| {s.task} | {s.label} | {len(s.seeds)} | {s.success_mean:.2f} ± {s.success_std:.2f} ({per_seed}) "
            f"| {statistics.fmean(s.score_dp3):.2f} | {round(statistics.fmean(s.train_steps))} "
            f"| {statistics.fmean(s.wall_s) / 60:.1f} | {statistics.fmean(s.latency_ms):.1f} "
            f"| {round(statistics.fmean(s.trainable_params)):,} |"
        )
    if any(s.weights == "random" for s in summarize(rows)):
        lines += [
            "",
            "SAM 2 rows marked *random weights* ran without the official checkpoint: they show that the "
            "path trains and runs, not what SAM 2 does.",
        ]
    return "\n".join(lines) + "\n"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            'the comparison\'s picture needs matplotlib: pip install matplotlib (or pip install "dp-sam2[test]"); '
            "results.csv and results.md are written without it"
        ) from err
    return plt


def plot(rows: list[dict], path: str | Path, title: str = "success over the final test episodes"):
    """Bars: mean success_last per task per encoder setting; dots: each seed. Returns the figure."""
    plt = _pyplot()
    summaries = summarize(rows)
    tasks = sorted({s.task for s in summaries})
    labels = sorted({(s.label, _order(s.encoder, s.mode)) for s in summaries}, key=lambda x: x[1])
    labels = [lbl for lbl, _ in labels]
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(tasks) * max(1, len(labels)) ** 0.5 + 3), 4.5))
    for j, label in enumerate(labels):
        xs, hs, errs = [], [], []
        for i, task in enumerate(tasks):
            s = next((s for s in summaries if s.task == task and s.label == label), None)
            if s is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            xs.append(x)
            hs.append(s.success_mean)
            errs.append(s.success_std)
            ax.scatter([x] * len(s.success), s.success, color="k", s=10, zorder=3)
        ax.bar(xs, hs, width=width * 0.95, yerr=errs, capsize=3, label=label)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success_last (bars: mean over seeds; dots: seeds)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def write_report(out_dir: str | Path, rows: list[dict], picture: bool = True, title: str = "") -> list[Path]:
    """``results.md`` (and ``results.png`` with ``picture``) beside ``results.csv``."""
    from dp_sam2.compare.results import atomic_write

    out_dir = Path(out_dir)
    written = [out_dir / "results.md"]
    atomic_write(written[0], markdown_table(rows, title) if rows else "No finished cells yet.\n")
    if picture and rows:
        plt = _pyplot()
        fig = plot(rows, out_dir / "results.png")
        plt.close(fig)
        written.append(out_dir / "results.png")
    return written
