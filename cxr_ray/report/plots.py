"""Pure figure functions: data in, PNG bytes out. Every figure names its data and run in its caption.

matplotlib's Agg backend only: the report is built on head nodes without a display.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np

PUBLISHED_ANCHORS = (
    ("Kermany et al. 2018 (InceptionV3, ImageNet)", 0.928, 0.968),
    ("MedMNIST v2 ResNet-50 (scratch)", 0.884, 0.962),
)


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def image_grid(images: np.ndarray, title: str, ncols: int = 8) -> bytes:
    """uint8 (N, H, W) -> one grid figure."""
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    plt, fig, _ = _figure(ncols * 0.9, nrows * 0.9 + 0.5)
    fig.clf()
    for i in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
    fig.suptitle(title, fontsize=9)
    return _png(plt, fig)


def loss_curves(histories: dict[str, list[dict[str, Any]]], title: str) -> bytes:
    """Discriminator and generator loss per epoch, one colour per GAN."""
    plt, fig, ax = _figure(6.5, 3.2)
    for i, (name, rows) in enumerate(sorted(histories.items())):
        epochs = [r["epoch"] for r in rows]
        color = f"C{i}"
        ax.plot(epochs, [r["loss_d"] for r in rows], color=color, linestyle="-", marker="o", label=f"{name} D")
        ax.plot(epochs, [r["loss_g"] for r in rows], color=color, linestyle="--", marker="s", label=f"{name} G")
    ax.set_xlabel("epoch")
    ax.set_ylabel("BCE loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def metric_bars(rows: Sequence[dict[str, Any]], metric: str, title: str, anchors: bool = True) -> bytes:
    """One bar per model with its 95% interval; the published anchors as horizontal lines."""
    plt, fig, ax = _figure(6.5, 3.4)
    labels = [r["label"] for r in rows]
    values = np.array([r[metric] for r in rows], dtype=float)
    low = values - np.array([r[f"{metric}_ci_low"] for r in rows], dtype=float)
    high = np.array([r[f"{metric}_ci_high"] for r in rows], dtype=float) - values
    ax.bar(range(len(rows)), values, yerr=[low, high], capsize=4, color="#4C72B0")
    for i, v in enumerate(values):
        ax.text(i, min(v + 0.02, 0.98), f"{v:.3f}", ha="center", fontsize=7)
    if anchors:
        column = 1 if metric == "accuracy" else 2
        for j, anchor in enumerate(PUBLISHED_ANCHORS):
            ax.axhline(anchor[column], color=f"C{j + 1}", linestyle=":", label=f"{anchor[0]}: {anchor[column]:.3f}")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=20, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    return _png(plt, fig)


def heatmap(values: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str) -> bytes:
    plt, fig, ax = _figure(1.6 + 1.4 * len(col_labels), 0.8 + 0.45 * len(row_labels))
    masked = np.ma.masked_invalid(values.astype(float))
    im = ax.imshow(masked, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            text = "n/a" if not np.isfinite(values[i, j]) else f"{values[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(col_labels)))
    ax.set_xticklabels(col_labels, fontsize=8)
    ax.set_yticks(range(len(row_labels)))
    ax.set_yticklabels(row_labels, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return _png(plt, fig)


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str) -> bytes:
    plt, fig, ax = _figure(4.8, 4.2)
    for i, (name, (fpr, tpr, auc)) in enumerate(sorted(curves.items())):
        ax.plot(fpr, tpr, color=f"C{i}", label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate (real called fake)")
    ax.set_ylabel("true positive rate (fake caught)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def timeline(rows: Sequence[dict[str, Any]], title: str) -> bytes:
    """Gantt chart of trainings: overlapping bars are trainings that shared the cluster."""
    rows = sorted(rows, key=lambda r: r["start"])
    t0 = min(r["start"] for r in rows)
    plt, fig, ax = _figure(7.0, 0.6 + 0.28 * len(rows))
    stages = sorted({r["stage"] for r in rows})
    for i, r in enumerate(rows):
        ax.barh(i, r["end"] - r["start"], left=r["start"] - t0, color=f"C{stages.index(r['stage'])}")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r["name"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first training started")
    ax.set_title(title, fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{i}") for i in range(len(stages))]
    # Bars run from top left to bottom right: the top right corner is free.
    ax.legend(handles, stages, fontsize=7, loc="upper right")
    return _png(plt, fig)


def quality_curves(results: list[dict[str, Any]], title: str) -> bytes:
    """KID x1000 per epoch, one line per run, each with its real-vs-real floor dashed.

    Symmetric-log y: the curves span 10-2000 while the floors sit near 0
    (KID is unbiased, so a floor can be slightly negative).
    """
    plt, fig, ax = _figure(6.5, 3.6)
    for index, result in enumerate(results):
        epochs = [r["epoch"] for r in result["rows"]]
        kid = [1000 * r["kid"] for r in result["rows"]]
        ax.plot(epochs, kid, marker="o", markersize=2.5, color=f"C{index}", label=f"{result['class_name']} generator")
        ax.axhline(1000 * result["floor"]["kid"], color=f"C{index}", linestyle="--", linewidth=1,
                   label=f"{result['class_name']} real train (floor)")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(bottom=-10)
    ax.set_xlabel("epoch (0 = untrained)")
    ax.set_ylabel(f"KID x1000 vs real {results[0]['split']}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(plt, fig)


def tamper_examples(examples: dict[str, np.ndarray]) -> bytes:
    """One row per test edit: the original, the edit, the true mask, the localiser's map (its region outlined at
    the map threshold chosen on val), titled with its direction and image score."""
    n = len(examples["edited"])
    plt, fig, _ = _figure(4 * 1.6, max(1, n) * 1.7 + 0.3)
    fig.clf()
    titles = ("original", "edited", "true mask", "localiser's map")
    for i in range(n):
        panels = (examples["original"][i], examples["edited"][i], examples["mask"][i], examples["map"][i])
        for j, (panel, title) in enumerate(zip(panels, titles)):
            ax = fig.add_subplot(n, 4, 4 * i + j + 1)
            ax.axis("off")
            if j == 3:
                ax.imshow(panel, cmap="magma", vmin=0, vmax=1)
                region = panel >= float(examples["map_threshold"])
                if region.any() and not region.all():  # a contour of a constant image warns
                    ax.contour(region, levels=[0.5], colors="cyan", linewidths=0.7)
                flagged = "flagged" if examples["score"][i] >= float(examples["threshold"]) else "missed"
                ax.set_title(f"{title}: {examples['score'][i]:.2f}, {flagged}", fontsize=7)
            else:
                ax.imshow(panel, cmap="gray", vmin=0, vmax=1 if j == 2 else 255)
                ax.set_title(f"{examples['direction'][i]}: {title}" if j == 0 else title, fontsize=7)
    return _png(plt, fig)
