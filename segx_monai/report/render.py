"""Presentation of the interpretation report: number formatting, HTML tables, matplotlib plots and gallery tiles,
all embedded in one offline HTML page (base64 PNG data URIs, inline CSS, no scripts or external resources)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from numpy.typing import ArrayLike

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

TILE_SIZE = (1600, 400)  # overlay strips are shrunk to fit, which keeps the page small
CSS = """
body { font-family: Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f0f0f0; }
p.explain { color: #444; max-width: 60em; } ul.notes { color: #a33; }
.plots, .gallery { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
.gallery figure { flex: 1 1 100%; } figcaption { font-size: 0.9em; color: #333; }
"""


def fmt(value: object) -> str:
    """A number with 3 decimals (integers as they are), ``n/a`` for a missing or NaN value, other values as text."""
    if isinstance(value, (bool, int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    if value is None:
        return "n/a"
    return value if isinstance(value, str) else json.dumps(value)


def fmt_estimate(value: float, interval: Sequence[float]) -> str:
    """``value [low, high]``; just ``n/a`` when the value is undefined, ``value [n/a]`` when only the interval is."""
    if math.isnan(value):
        return "n/a"
    low, high = interval
    return f"{fmt(value)} [n/a]" if math.isnan(low) else f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def table(header: Sequence[str], rows: Sequence[Sequence[object]], explanation: str, notes: Sequence[str] = ()) -> str:
    """An HTML table of formatted cells, followed by a sentence on what it shows and the reasons for any n/a."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>{paragraph(explanation)}{note_list(notes)}"


def paragraph(text: str) -> str:
    """An explanatory paragraph."""
    return f'<p class="explain">{html.escape(text)}</p>'


def note_list(notes: Sequence[str]) -> str:
    """The reasons why values are n/a or plots are missing, as a list (nothing without notes)."""
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f'<ul class="notes">{items}</ul>' if notes else ""


def png_uri(data: bytes) -> str:
    """A ``data:`` URI for PNG bytes, so the page needs no other file."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_uri(fig: plt.Figure) -> str:
    """The figure as an embedded PNG; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return png_uri(buffer.getvalue())


def image_uri(path: Path, min_width: int = 0) -> str:
    """A PNG file as an embedded PNG, enlarged by a whole factor (nearest neighbour) to at least ``min_width`` pixels
    wide, then shrunk to at most ``TILE_SIZE``."""
    with Image.open(path) as image:
        factor = math.ceil(min_width / image.width)
        if factor > 1:
            image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
        image.thumbnail(TILE_SIZE)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return png_uri(buffer.getvalue())


def line_plot(
    lines: Mapping[str, tuple[ArrayLike, ArrayLike]], xlabel: str, ylabel: str, title: str,
    reference: tuple[float, str] | None = None, legend_loc: str = "best",
) -> plt.Figure:
    """Curves ``label -> (x, y)`` on one set of axes, with an optional dashed horizontal reference ``(y, label)``."""
    fig, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
    for label, (x, y) in lines.items():
        ax.plot(np.asarray(x), np.asarray(y), label=label, linewidth=1.8)
    if reference is not None:
        ax.axhline(reference[0], color="grey", linestyle="--", linewidth=1, label=reference[1])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(0, 1))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc=legend_loc)
    return fig


def histogram_plot(panels: Mapping[str, tuple[ArrayLike, ArrayLike]]) -> plt.Figure:
    """One panel per score ``label -> (scores, correct)``: overlaid histograms of correct and incorrect predictions."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False, layout="constrained")
    for ax, (label, (scores, correct)) in zip(axes[0], panels.items()):
        scores, correct = np.asarray(scores), np.asarray(correct, dtype=bool)
        bins = np.histogram_bin_edges(scores, bins=20)
        for outcome, name, color in ((True, "correct", "tab:green"), (False, "incorrect", "tab:red")):
            group = scores[correct == outcome]
            ax.hist(group, bins=bins, alpha=0.55, color=color, label=f"{name} (n = {len(group)})")
        ax.set(xlabel=label, ylabel="number of predictions", title=f"{label} by outcome")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    return fig


def figure(uri: str, caption: str) -> str:
    """An embedded image with its caption."""
    caption = html.escape(caption)
    return f'<figure><img src="{uri}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'


def figure_row(figures: Sequence[tuple[str, str]], kind: str = "plots", notes: Sequence[str] = ()) -> str:
    """Figures ``(data URI, caption)`` side by side (``kind`` "plots") or stacked ("gallery"), then any notes."""
    items = "".join(figure(uri, caption) for uri, caption in figures)
    return f'<div class="{kind}">{items}</div>{note_list(notes)}'


def page(title: str, body: str) -> str:
    """A complete standalone HTML page."""
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
