"""The outputs of a search by example (:mod:`models.search`): a CSV of the hits, or a self-contained HTML page
with one card per hit (a log-mel thumbnail and a 5-s audio player, both inline: no CDN, no fetch) and the query
at the top (its examples, with the same media for a window or an audio file).

Both are written atomically into a folder that must exist (:func:`reports.htmlpage.check_out`). The media come
from the audio under the competition folder (``data_dir``: ``--data``, else the one ingest recorded); a hit whose
file is missing or unreadable gets a note on its card, and a folder holding none of the hits' files is refused.
"""

from __future__ import annotations

import csv
import html
import io
import os
from pathlib import Path

from featurestore.windows import parse_window_id
from models.search import SearchResult
from reports.error_page import WindowMedia, window_media
from reports.htmlpage import audio_tag, check_out, html_table, img, render_page, write_page

CSV_COLUMNS = ("rank", "window_id", "filename", "start_s", "site", "score", "best_query")
OUT_SUFFIXES = (".csv", ".html")


def check_search_out(path: str | os.PathLike) -> Path:
    """``--out``: a ``.csv`` or ``.html`` file in an existing folder (refused before any work otherwise)."""
    out = check_out(path)
    if out.suffix.lower() not in OUT_SUFFIXES:
        from featurestore.errors import UserInputError

        raise UserInputError(f"--out {path}: write a .csv or .html file (got {out.suffix or 'no suffix'})")
    return out


def write_csv(result: SearchResult, path: str | os.PathLike) -> Path:
    """The hits as CSV (:data:`CSV_COLUMNS`, best first; score with 6 decimals), written atomically."""
    out = check_out(path)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for h in result.hits:
        w.writerow([h.rank, h.window_id, h.filename, h.start_s, h.site or "", f"{h.score:.6f}", h.best_query])
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _media_html(m: WindowMedia, alt: str) -> str:
    if m.note is None:
        return img(m.mel_b64, f"mel {alt}") + audio_tag(m.audio_b64)
    return f"<p class='note'>{html.escape(m.note)}</p>"


def render_search_html(result: SearchResult, data_dir: Path, command: str, *, max_examples: int = 8) -> str:
    """The page (module docstring). Raises :class:`UserInputError` when ``data_dir`` holds none of the hits'
    audio files (the wrong folder, not a few missing files)."""
    from featurestore.errors import UserInputError

    paths = [data_dir / parse_window_id(h.window_id)[0] for h in result.hits]
    if paths and not any(p.exists() for p in paths):
        raise UserInputError(f"none of the {len(paths)} hits' audio files is under {data_dir} (e.g. {paths[0]}): "
                             "pass --data DIR, the competition folder holding train_soundscapes/ and train_audio/, "
                             "or write a .csv instead")
    query_cards = []
    for item in result.query:
        examples = result.examples.get(item.text, [])
        cards = []
        for ex in examples[:max_examples]:
            if item.kind == "audio":
                path_text, _, offset = ex.rpartition("@")
                media = window_media(Path(path_text), float(offset))
            else:
                key, start = parse_window_id(ex)
                media = window_media(data_dir / key, start)
            cards.append(f"<div class='clip'><code>{html.escape(ex)}</code>{_media_html(media, ex)}</div>")
        more = (f"<p class='more'>... and {len(examples) - max_examples} more example windows</p>"
                if len(examples) > max_examples else "")
        what = {"class": "focal clips of the class", "window": "a stored window", "audio": "an audio file",
                "head": "a trained head's score"}[item.kind]
        query_cards.append(f"<h3><code>{html.escape(item.text)}</code> ({what}, {len(examples)} example "
                           f"window(s))</h3><div class='clips'>{''.join(cards)}</div>{more}")
    p = result.params
    settings = [{"setting": k, "value": v} for k, v in (
        ("features", result.features), ("versions", ", ".join(f"{k} {v}" for k, v in result.versions.items())),
        ("similarity", "head probability" if result.query[0].kind == "head"
         else f"cosine, {p.combine} over the examples"),
        ("pooling", p.pooling), ("where", p.where or "(none)"), ("per file", p.per_file or "no cap"),
        ("per site", p.per_site or "no cap"), ("labelled windows", "skipped" if p.exclude_labelled else "included"),
        ("windows searched", result.scanned), ("hits", len(result.hits)))]
    cards = []
    for h, path in zip(result.hits, paths, strict=True):
        media = window_media(path, h.start_s)
        where = ", ".join(x for x in (h.site, str(h.date) if h.date else None,
                                      f"{h.hour:02d} h" if h.hour is not None else None) if x)
        cards.append(f"<div class='clip' data-rank='{h.rank}'><b>#{h.rank}</b> score {h.score:.4f}"
                     f"<code>{html.escape(h.window_id)}</code>{html.escape(where)}"
                     f"{'<br>best match: ' + html.escape(h.best_query) if len(result.query) > 1 else ''}"
                     f"{_media_html(media, h.window_id)}</div>")
    sections = [("query", "Query", "".join(query_cards) + html_table(settings, None)),
                ("hits", f"Hits ({len(result.hits)})",
                 f"<div class='clips'>{''.join(cards)}</div>" if cards else "<p class='none'>no window matched</p>")]
    return render_page("Search by example", command, sections)


def write_search_html(result: SearchResult, path: str | os.PathLike, data_dir: Path, command: str) -> Path:
    """:func:`render_search_html` written atomically to ``path``."""
    return write_page(path, render_search_html(result, data_dir, command))


def run_search(store_dir: str | os.PathLike, features: str, query: list[str], params, out: str | os.PathLike, *,
               data_dir: str | os.PathLike | None = None, command: str = "python -m pipelines.search",
               use_cache: bool = True, threads: int = 2, bars=None) -> tuple[Path, SearchResult]:
    """The search job: check ``--out`` (an existing folder, .csv or .html) and the data folder before any work,
    search (:func:`models.search.search`) and write the CSV or the page. Returns the file written and the
    result; nothing is written when anything fails."""
    from embed.job import data_dir_of
    from featurestore.store import FeatureStore
    from models.search import search
    from reports.error_page import check_data_dir

    out_path = check_search_out(out)
    with FeatureStore.open(store_dir, create=False, read_only=True) as store:
        audio_root = None
        if out_path.suffix.lower() == ".html":
            audio_root = Path(data_dir).expanduser().resolve() if data_dir else data_dir_of(store)
            check_data_dir(audio_root, given=bool(data_dir), instead=", or write a .csv instead")
        result = search(store, features, query, params, use_cache=use_cache, threads=threads, bars=bars)
    if audio_root is None:
        return write_csv(result, out_path), result
    return write_search_html(result, out_path, audio_root, command), result


def summary_line(path: Path, result: SearchResult) -> str:
    """The job's last line: what was written, and the best hit."""
    best = f"; best {result.hits[0].window_id} ({result.hits[0].score:.4f})" if result.hits else ""
    return f"{len(result.hits)} hit(s) of {result.scanned:,} windows searched written to {path}{best}"
