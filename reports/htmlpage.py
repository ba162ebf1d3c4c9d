"""Self-contained HTML pages (the data memo, the error-analysis page): one home for the page shell,
tables, embedded PNG plots and embedded audio.

Everything a page shows is inside the file - plots are base64 PNGs (matplotlib, Agg backend, imported
only when a plot is drawn) and audio is base64 OGG/Vorbis - so a page opens offline and can be
attached to a Kaggle discussion or a ticket as it is. Pages are written atomically, into a folder that
must exist (:func:`check_out`: a typo in ``--out`` is refused, never a new folder tree).
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from featurestore.errors import UserInputError

if TYPE_CHECKING:
    import pyarrow as pa

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
th{background:#f3f3f3}img{max-width:100%}.note{color:#a55}.none,.more{color:#777;font-size:12px}
section{border-top:2px solid #ddd;margin-top:1.5em}
#key-numbers{border:2px solid #9ab;background:#f6f9fb;padding:0 1em .8em;border-radius:6px}
table.keys{font-size:13px}table.keys th{background:none;font-weight:normal}
table.keys td.num{font-weight:bold;text-align:right;min-width:5em}
.clips{display:flex;flex-wrap:wrap;gap:8px}
.clip{border:1px solid #ddd;padding:4px;font-size:11px;width:250px;box-sizing:border-box;overflow-wrap:anywhere}
.clip code{display:block;overflow-wrap:anywhere;word-break:break-all}.clip img{display:block}
.clip audio{display:block;width:100%;height:28px}.scroll{overflow-x:auto;max-width:100%}"""


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use only)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as pyplot

    return pyplot


def png_bytes(fig, dpi: int = 90) -> bytes:
    """Render a figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def png(fig, dpi: int = 90) -> str:
    """Render a figure to a base64 PNG string (for a data URI) and close it."""
    return b64(png_bytes(fig, dpi))


def b64(data: bytes) -> str:
    """Bytes as base64 text (what a data URI holds)."""
    return base64.b64encode(data).decode("ascii")


def img(b64: str, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{b64}'>"


def ogg_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A mono signal as OGG/Vorbis bytes (about 15x smaller than 16-bit WAV, decodable by soundfile)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples, np.float32), sample_rate, format="OGG", subtype="VORBIS")
    return buf.getvalue()


def audio_tag(b64: str) -> str:
    """An audio player of a base64 OGG; ``preload='metadata'`` so it shows the clip's length before a click (the
    audio is inline: nothing is fetched)."""
    return f"<audio controls preload='metadata' src='data:audio/ogg;base64,{b64}'></audio>"


def fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else f"{value:.4g}"
    if isinstance(value, list):
        text = ", ".join(fmt(v) for v in value[:8])
        return text + (f", ... ({len(value)})" if len(value) > 8 else "")
    return str(value)


def fixed(decimals: int, missing: str = "n/a") -> Callable[[object], str]:
    """A cell format: a number with exactly ``decimals`` decimals (one column never mixes 0.9 and 0.8123), and
    ``missing`` for None / NaN."""
    def show(value) -> str:
        if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
            return missing
        return f"{value:.{decimals}f}"

    return show


def html_table(table: pa.Table | Sequence[dict] | None, max_rows: int | None = 25, *,
               formats: Mapping[str, Callable[[object], str]] | None = None,
               cell: Callable[[dict, str], str | None] | None = None) -> str:
    """An HTML table of a pyarrow table or a list of row dicts (first ``max_rows`` rows, then a count), inside a
    box that scrolls sideways when it is wider than the page. A cell is ``cell(row, column)`` when that returns
    text, else ``formats[column](value)`` for the columns named there, else :func:`fmt`."""
    rows = table.to_pylist() if hasattr(table, "to_pylist") else list(table or [])
    if not rows:
        return "<p class='none'>no rows</p>"
    cols = list(rows[0])
    formats = formats or {}
    shown = rows if max_rows is None else rows[:max_rows]

    def text(r: dict, c: str) -> str:
        custom = cell(r, c) if cell is not None else None
        if custom is not None:
            return custom
        return formats[c](r[c]) if c in formats else fmt(r[c])

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(text(r, c))}</td>" for c in cols) + "</tr>" for r in shown)
    more = f"<p class='more'>... {len(rows) - len(shown)} more rows</p>" if len(rows) > len(shown) else ""
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{more}"


def render_page(title: str, command: str, sections: Sequence[tuple[str, str, str]], *,
                lead: str = "", toc_from: int = 0) -> str:
    """The page: ``sections`` are ``(id, heading, body HTML)``; a table of contents lists the sections
    from index ``toc_from`` on and is placed before that section (``lead`` HTML goes under the title)."""
    toc = "".join(f"<li><a href='#{sid}'>{html.escape(h)}</a></li>" for sid, h, _ in sections[toc_from:])
    parts = [f"<section id='{sid}'><h2>{html.escape(h)}</h2>{body}</section>" for sid, h, body in sections]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p>Generated {stamp} by "
            f"<code>{html.escape(command)}</code>.</p>{lead}{''.join(parts[:toc_from])}<ol>{toc}</ol>"
            f"{''.join(parts[toc_from:])}</body></html>")


def check_out(path: str | os.PathLike) -> Path:
    """The resolved ``--out`` file of a page, refused (:class:`UserInputError`, one line) when its folder does not
    exist - the rule and wording of ``pipelines.sql --out``: a typo never becomes a new folder tree - or when it
    names a folder. Jobs call it before their work, so a bad ``--out`` costs nothing."""
    given = Path(path)
    out = given.expanduser().resolve()
    if not out.parent.is_dir():
        raise UserInputError(f"--out {given}: the folder {out.parent} does not exist")
    if out.is_dir():
        raise UserInputError(f"--out {given} is a folder; give the HTML file to write, e.g. {given / 'page.html'}")
    return out


def write_page(path: str | os.PathLike, page: str) -> Path:
    """Write ``page`` to ``path`` atomically (a temporary file beside it, then a rename; :func:`check_out`: the
    folder must exist); returns the resolved path."""
    out = check_out(path)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
