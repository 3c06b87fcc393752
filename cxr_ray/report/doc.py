"""The report document: Markdown and self-contained HTML written side by side (images to files and inline)."""

from __future__ import annotations

import base64
import html
import re
from typing import Any

from cxr_ray import storage
from cxr_ray.storage import S3Settings


class Doc:
    """Accumulates Markdown and HTML side by side; images go to files (md) and inline (html)."""

    def __init__(self, folder: str, s3: S3Settings | None) -> None:
        self.folder, self.s3 = folder, s3
        self.md: list[str] = []
        self.html: list[str] = []
        self.images: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
        self.md.append("| " + " | ".join(header) + " |")
        self.md.append("|" + "---|" * len(header))
        for r in rows:
            self.md.append("| " + " | ".join(fmt(v) for v in r) + " |")
        self.md.append("")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(_td(fmt(v)) for v in r) + "</tr>" for r in rows)
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def markdown(self, text: str) -> None:
        """Markdown from a stage (tables, bullets, **bold**, `code`) into both outputs."""
        self.md.append(text.rstrip() + "\n")
        self.html.append(markdown_to_html(text))

    def image(self, name: str, png: bytes, caption: str) -> None:
        storage.write_bytes_atomic(storage.join(self.folder, name), png, self.s3)
        self.images.append(name)
        self.md.append(f"![{caption}]({name})\n\n*{caption}*\n")
        data = base64.b64encode(png).decode()
        self.html.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )


def _td(text: str) -> str:
    """A table cell; numbers (and "value [low, high]" cells) align right, words left."""
    numeric = re.fullmatch(r"[-+]?[\d.,%]+( \[[-\d., ]+\])?|nan", text.strip()) is not None
    return f"<td class='num'>{_inline(text)}</td>" if numeric else f"<td>{_inline(text)}</td>"


def _inline(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def markdown_to_html(text: str) -> str:
    """The small Markdown subset the stages write: headings, pipe tables, '- ' bullets and paragraphs."""
    parts: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line:
            i += 1
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append(lines[i].strip())
                i += 1
            cells = [[c.strip() for c in row.strip("|").split("|")] for row in block if not set(row) <= set("|-: ")]
            head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in cells[1:])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].strip().startswith("- "):
                items.append(f"<li>{_inline(lines[i].strip()[2:])}</li>")
                i += 1
            parts.append(f"<ul>{''.join(items)}</ul>")
        elif line.startswith("#"):
            level = min(6, len(line) - len(line.lstrip("#")) + 1)
            parts.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
            i += 1
        else:
            parts.append(f"<p>{_inline(line)}</p>")
            i += 1
    return "".join(parts)


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em;border-bottom:2px solid #4C72B0}h2{font-size:1.3em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0;font-size:.88em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f0f3f8}td.num{text-align:right;font-variant-numeric:tabular-nums}figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}li{margin:.25em 0}code{font-size:.9em;background:#f4f4f4;padding:0 .2em}
h3{font-size:1.1em}
"""
