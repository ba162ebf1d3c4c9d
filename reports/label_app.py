"""The labelling web app of ``python -m pipelines.label --class CODE``: a page of windows for one class, each with a
log-mel spectrogram, a 5-s audio player, the probe's score and why the window was picked; positive / negative /
uncertain per window, undo, and "next page", which retrains the probe (:class:`models.probe.LabelLoop`).

Guarantees:

* **Local only.** The server listens on 127.0.0.1 (no option offers another address) and answers only requests
  whose ``Host`` is that address or ``localhost`` at its port; a label, undo or next-page request must be a JSON
  POST from the page's own origin, so another web site open in the browser cannot label for the user.
* **Offline.** The page is one HTML document with its CSS and JavaScript inline; spectrograms (PNG) and clips
  (OGG/Vorbis, 5 s) are served by this server from the audio folder (``--data``, else the one ingest recorded),
  made once per window and kept in memory. Nothing is fetched from any other host.
* **Durable clicks.** A label (or undo) request is answered only after :meth:`LabelLoop.label` (``undo``) wrote its
  part to the store (:mod:`featurestore.user_labels`: one fsynced file per click); the page shows the label as
  stored only on that answer, and an error banner with the reason (never a silent loss) when the write failed or
  the server is unreachable. A crash, a ``kill -9`` or a closed tab loses no answered click.
* **One loop, many threads.** Every use of the :class:`LabelLoop` and the store is under one lock; media are made
  under a second lock (matplotlib is not thread-safe) so thumbnails never hold up a click.
* **Training jobs can still run.** The store is opened read-write only to register the ``user_labels`` table, then
  read-only for the session; its catalog connection is released after every request (a writer can open the store
  between requests; see :meth:`featurestore.store.FeatureStore.release_catalog`).

The page's keyboard shortcuts are listed on it (:data:`SHORTCUTS`).
"""

from __future__ import annotations

import errno
import html
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.errors import StackError, UserInputError
from featurestore.user_labels import LABELS as ALL_LABELS
from featurestore.windows import parse_window_id

if TYPE_CHECKING:
    from featurestore.store import FeatureStore
    from models.probe import LabelLoop, Page
    from reports.error_page import WindowMedia

HOST = "127.0.0.1"
LABELS = tuple(v for v in ALL_LABELS if v != "cleared")     # what a click may say (undo clears)
SHORTCUTS = (("j / → / ↓", "next window"), ("k / ← / ↑", "previous window"), ("p", "positive"), ("n", "negative"),
             ("u", "uncertain"), ("space", "play / pause the clip"), ("z / ctrl-z", "undo the last click"),
             ("Enter", "next page (retrains the probe)"))
MEDIA_KINDS = {"mel.png": "image/png", "clip.ogg": "audio/ogg"}
WHY = {"search": "search hit (no probe yet)", "top": "top probe score", "margin": "near the probe's boundary",
       "audit": "random audit sample"}


# ---------------------------------------------------------------------------- the app (no HTTP)
class LabelApp:
    """The state behind the page: the :class:`LabelLoop`, its current page, the round lines so far and a media cache.

    Every method may be called from any thread. ``say`` receives the lines meant for the terminal (the round lines,
    one per click and undo); ``release``, called after each use of the loop under the lock, lets go of the store's
    catalog so other jobs can open it meanwhile."""

    def __init__(self, loop: LabelLoop, data_dir: Path, *, primary_label: str, annotator: str, features: str,
                 say: Callable[[str], object] = print, release: Callable[[], object] | None = None):
        self.loop = loop
        self.data_dir = Path(data_dir)
        self.primary_label, self.annotator, self.features = primary_label, annotator, features
        self.say = say
        self._release = release or (lambda: None)
        self.lock = threading.Lock()
        self._media_lock = threading.Lock()
        self._media: dict[str, WindowMedia] = {}
        self._known: set[str] = set()           # window ids ever shown: the only ones whose media are served
        self.lines: list[str] = []
        with self._using():
            self.page = loop.page()
        self._new_page()

    @contextmanager
    def _using(self) -> Iterator[None]:
        """The lock around the loop; the store's catalog released on the way out."""
        with self.lock:
            try:
                yield
            finally:
                self._release()

    def _new_page(self) -> None:
        with self.lock:
            line = self.page.stats.line()
            self.lines.append(line)
            ids = [item.window_id for item in self.page.items]
            self._known.update(ids)
        self.say(line)
        threading.Thread(target=self._prefetch, args=(ids,), name="media-prefetch", daemon=True).start()

    def _prefetch(self, ids: Sequence[str]) -> None:
        for wid in ids:
            try:
                self.media(wid)
            except Exception:   # noqa: BLE001 - a failure shows when the browser asks for that window
                continue

    # ------------------------------------------------------------------ actions
    def refresh(self) -> Page:
        """The current page with every current label filled in (re-read from the store)."""
        with self._using():
            self.page = self.loop.page()
            return self.page

    def label(self, window_id: str, label: str) -> dict:
        """Store one click (durable when this returns); ``{"window_id", "label", "labelled"}``. UserInputError for a
        label that is not positive / negative / uncertain (and whatever :meth:`LabelLoop.label` refuses)."""
        if label not in LABELS:
            raise UserInputError(f"label {label!r} is not one of {', '.join(LABELS)}")
        with self._using():
            self.loop.label(window_id, label)
            self.page = self.loop.page()
        labelled = sum(item.label is not None for item in self.page.items)
        self.say(f"{label:<9} {window_id}  ({labelled}/{len(self.page.items)} on this page)")
        return {"window_id": window_id, "label": label, "labelled": labelled}

    def undo(self) -> dict:
        """Revert the annotator's last click of this session; ``{"window_id", "was", "label", "message"}`` where
        ``label`` is the window's label now (None when it has none)."""
        with self._using():
            result = self.loop.undo()
            self.page = self.loop.page()
        now = None if result.now == "cleared" else result.now
        message = f"undone: {result.window_id} {result.was} -> {result.now}"
        self.say(message)
        return {"window_id": result.window_id, "was": result.was, "label": now, "message": message}

    def next_page(self) -> dict:
        """Retrain the probe and pick the next page (:meth:`LabelLoop.next_page`); ``{"round", "line"}``."""
        self.say(f"retraining the probe on the labels so far for round {self.page.round + 1} ...")
        with self._using():
            self.page = self.loop.next_page()
        self._new_page()
        return {"round": self.page.round, "line": self.lines[-1]}

    def state(self) -> dict:
        """The page as JSON-ready data (what the HTML shows)."""
        with self.lock:
            page, lines = self.page, list(self.lines)
        return {"class": self.primary_label, "annotator": self.annotator, "round": page.round, "lines": lines,
                "items": [{"window_id": i.window_id, "score": i.score, "why": i.why, "label": i.label,
                           "site": i.site} for i in page.items]}

    # ------------------------------------------------------------------ media
    def audio_path(self, window_id: str) -> tuple[Path, int]:
        key, start = parse_window_id(window_id)
        return self.data_dir / key, start

    def media(self, window_id: str) -> WindowMedia:
        """The window's spectrogram and clip (made once, then cached). Only windows shown on a page are served:
        UserInputError for any other id."""
        if window_id not in self._known:
            raise UserInputError(f"window {window_id!r} is not on a page of this session")
        with self._media_lock:
            got = self._media.get(window_id)
            if got is None:
                from reports.error_page import window_media  # pulls the stack's modules in: not at start-up

                got = self._media[window_id] = window_media(*self.audio_path(window_id))
        return got

    # ------------------------------------------------------------------ the page
    def render(self) -> str:
        """The whole page (module docstring): the round lines, the shortcuts, one card per window."""
        with self.lock:
            page, lines = self.page, list(self.lines)
        cards = [self._card(i, item) for i, item in enumerate(page.items)]
        keys = "".join(f"<li><kbd>{html.escape(k)}</kbd> {html.escape(v)}</li>" for k, v in SHORTCUTS)
        rounds = "".join(f"<li>{html.escape(line)}</li>" for line in reversed(lines))
        title = f"Label {self.primary_label}"
        return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{CSS}</style></head><body>"
                f"<header><h1>{html.escape(title)} <small>round {page.round} · {html.escape(self.annotator)} · "
                f"{html.escape(self.features)}</small></h1>"
                f"<p id='round-line'>{html.escape(lines[-1] if lines else '')}</p>"
                f"<div id='error' role='alert' hidden></div><p id='status' aria-live='polite'></p></header>"
                f"<main><div id='cards'>{''.join(cards) or '<p>no window left to label</p>'}</div>"
                f"<p><button id='next' type='button'>next page (retrain the probe) ⏎</button> "
                f"<button id='undo' type='button'>undo</button></p></main>"
                f"<aside><h2>Keys</h2><ul id='keys'>{keys}</ul><h2>Rounds</h2><ol id='rounds' reversed>{rounds}</ol>"
                f"</aside><script>{SCRIPT}</script></body></html>")

    def _card(self, i: int, item) -> str:
        wid = item.window_id
        q = urllib.parse.quote(wid, safe="")
        path, _start = self.audio_path(wid)
        if path.exists():
            media = (f"<img alt='mel spectrogram of {html.escape(wid)}' src='/media/mel.png?w={q}' "
                     f"width='224' height='92'><audio controls preload='metadata' src='/media/clip.ogg?w={q}'></audio>")
        else:
            media = f"<p class='note'>audio not found: {html.escape(str(path))} (pass --data DIR)</p>"
        score = "—" if item.score is None else f"{item.score:.3f}"
        what = "cosine" if item.why == "search" else "probe"
        buttons = "".join(f"<button type='button' class='lab {v}{' on' if item.label == v else ''}' data-label='{v}' "
                          f"tabindex='-1'>{v} ({v[0]})</button>" for v in LABELS)
        site = f" · {html.escape(item.site)}" if item.site else ""
        return (f"<div class='card' data-i='{i}' data-window='{html.escape(wid)}' data-why='{html.escape(item.why)}' "
                f"data-label='{html.escape(item.label or '')}'><div class='head'><b>#{i + 1}</b> {what} {score} · "
                f"<span class='why'>{html.escape(WHY.get(item.why, item.why))}</span>{site}</div>"
                f"<code>{html.escape(wid)}</code>{media}<div class='buttons'>{buttons}</div>"
                f"<div class='current'>label: <b>{html.escape(item.label or 'none')}</b></div></div>")


CSS = """body{font-family:system-ui,sans-serif;margin:0;padding:0 1em 2em;color:#222;display:grid;
grid-template-columns:1fr 200px;gap:1em}header{grid-column:1/3;position:sticky;top:0;background:#fff;z-index:2;
border-bottom:1px solid #ddd;padding:.3em 0}h1{font-size:20px;margin:.3em 0}h1 small{font-weight:normal;color:#666;
font-size:13px}h2{font-size:14px;margin:.8em 0 .3em}#round-line{font-family:monospace;font-size:13px;margin:.2em 0}
#error{background:#fde8e8;border:2px solid #c33;color:#900;padding:.4em .6em;font-weight:bold}
#status{color:#555;font-size:12px;margin:.2em 0;min-height:1.2em}
#cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:2px solid #ddd;border-radius:6px;padding:5px;width:238px;
box-sizing:border-box;font-size:12px}.card.sel{border-color:#36c;box-shadow:0 0 0 2px #9bd}
.card.saving{opacity:.6}.card code{display:block;font-size:10px;word-break:break-all;margin:2px 0}
.card img{display:block;width:224px;height:92px}.card audio{display:block;width:100%;height:30px;margin:3px 0}
.why{color:#555}.card[data-why=margin] .why{color:#a50}.card[data-why=audit] .why{color:#575}
.buttons{display:flex;gap:3px}.lab{flex:1;font-size:10.5px;padding:3px 0;border:1px solid #aaa;border-radius:4px;
background:#f7f7f7;cursor:pointer;white-space:nowrap}.lab.on.positive{background:#2a7;color:#fff}.lab.on.negative{background:#c44;
color:#fff}.lab.on.uncertain{background:#d90;color:#fff}.current{margin-top:3px}.note{color:#a55}
aside{font-size:12px}aside ul{padding-left:0;list-style:none}kbd{border:1px solid #aaa;border-radius:3px;
padding:0 3px;background:#f3f3f3}#rounds{font-family:monospace;font-size:11px;padding-left:1.5em}
#next,#undo{font-size:14px;padding:4px 10px}"""

SCRIPT = r"""
const cards=[...document.querySelectorAll('.card')];let sel=0,busy=false;
const $=id=>document.getElementById(id);
function select(i){if(!cards.length)return;sel=Math.max(0,Math.min(cards.length-1,i));
 cards.forEach((c,j)=>c.classList.toggle('sel',j===sel));cards[sel].scrollIntoView({block:'nearest'});}
function status(t){$('status').textContent=t;}
function fail(t){const e=$('error');e.textContent=t;e.hidden=false;}
function clearError(){$('error').hidden=true;$('error').textContent='';}
async function post(url,body){let r;
 try{r=await fetch(url,{method:'POST',headers:{'Content-Type':'application/json'},body:JSON.stringify(body||{})});}
 catch(e){throw new Error('the server is unreachable (is python -m pipelines.label still running?)');}
 let d={};try{d=await r.json();}catch(e){d={error:'HTTP '+r.status};}
 if(!r.ok||d.error)throw new Error(d.error||('HTTP '+r.status));return d;}
function show(card,label){card.dataset.label=label||'';
 card.querySelectorAll('.lab').forEach(b=>b.classList.toggle('on',b.dataset.label===label));
 card.querySelector('.current b').textContent=label||'none';}
async function label(i,value,advance){const c=cards[i];if(!c)return;c.classList.add('saving');
 try{const d=await post('/label',{window_id:c.dataset.window,label:value});show(c,d.label);clearError();
  status('stored: '+value+' for '+c.dataset.window);if(advance)select(i+1);}
 catch(e){fail('NOT stored: '+value+' for '+c.dataset.window+': '+e.message);}
 finally{c.classList.remove('saving');}}
async function undo(){try{const d=await post('/undo');clearError();status(d.message);
  const c=cards.find(c=>c.dataset.window===d.window_id);if(c){show(c,d.label);select(cards.indexOf(c));}}
 catch(e){fail('undo failed: '+e.message);}}
async function next(){if(busy)return;busy=true;$('next').disabled=true;
 status('retraining the probe and picking the next page ...');
 try{await post('/next');location.reload();}
 catch(e){fail('next page failed: '+e.message);busy=false;$('next').disabled=false;status('');}}
function play(){const a=cards[sel]&&cards[sel].querySelector('audio');if(!a)return;
 document.querySelectorAll('audio').forEach(o=>{if(o!==a)o.pause();});
 if(a.paused){a.currentTime=a.ended?0:a.currentTime;a.play().catch(e=>fail('cannot play: '+e.message));}else a.pause();}
cards.forEach((c,i)=>{c.addEventListener('click',()=>select(i));
 c.querySelectorAll('.lab').forEach(b=>{b.addEventListener('mousedown',e=>e.preventDefault());
  b.addEventListener('click',e=>{e.stopPropagation();select(i);label(i,b.dataset.label,false);});});
 const a=c.querySelector('audio');if(a)a.addEventListener('play',()=>select(i));});
$('next').addEventListener('click',next);$('undo').addEventListener('click',undo);
const KEYS={p:'positive',n:'negative',u:'uncertain'};
document.addEventListener('keydown',e=>{if(e.altKey||e.metaKey)return;const k=e.key;
 if(e.ctrlKey){if(k==='z'||k==='Z'){e.preventDefault();undo();}return;}
 if(k===' '&&e.target.tagName==='AUDIO')return;
 if(k==='j'||k==='ArrowRight'||k==='ArrowDown'){e.preventDefault();select(sel+1);}
 else if(k==='k'||k==='ArrowLeft'||k==='ArrowUp'){e.preventDefault();select(sel-1);}
 else if(KEYS[k]){e.preventDefault();label(sel,KEYS[k],true);}
 else if(k===' '){e.preventDefault();play();}
 else if(k==='z'){e.preventDefault();undo();}
 else if(k==='Enter'){e.preventDefault();next();}});
document.addEventListener('keyup',e=>{if(e.key===' ')e.preventDefault();});
select(0);
"""


# ---------------------------------------------------------------------------- HTTP
class _Handler(BaseHTTPRequestHandler):
    """Routes: ``GET /`` the page, ``GET /state`` its JSON, ``GET /media/mel.png|clip.ogg?w=ID``, ``POST /label``
    (``{"window_id", "label"}``), ``POST /undo``, ``POST /next``."""

    app: LabelApp           # set on the class made by make_server
    server_version = "birdclef-label/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:   # noqa: A002 - the base class's name
        return                                              # no access log on the terminal: the app says what matters

    # ------------------------------------------------------------------ replies
    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store" if ctype.startswith(("text/html", "application/json"))
                         else "private, max-age=3600")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: dict) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self.close_connection = True        # a refused request's body may be unread: never reuse the connection
        self._json(status, {"error": message})

    def _allowed_host(self) -> bool:
        port = self.server.server_address[1]
        return self.headers.get("Host", "") in (f"{HOST}:{port}", f"localhost:{port}")

    # ------------------------------------------------------------------ GET
    def do_GET(self) -> None:   # noqa: N802 - http.server's name
        if not self._allowed_host():
            return self._error(HTTPStatus.FORBIDDEN, "this server answers only http://127.0.0.1 (or localhost)")
        url = urllib.parse.urlsplit(self.path)
        try:
            if url.path == "/":
                return self._send(HTTPStatus.OK, self.app.render().encode(), "text/html; charset=utf-8")
            if url.path == "/state":
                return self._json(HTTPStatus.OK, self.app.state())
            if url.path == "/favicon.ico":
                return self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            kind = url.path.removeprefix("/media/")
            if url.path.startswith("/media/") and kind in MEDIA_KINDS:
                wid = urllib.parse.parse_qs(url.query).get("w", [""])[0]
                return self._media(wid, kind)
            return self._error(HTTPStatus.NOT_FOUND, f"no page {url.path}")
        except UserInputError as exc:
            return self._error(HTTPStatus.NOT_FOUND, str(exc))
        except Exception as exc:   # noqa: BLE001 - the browser gets the reason; the server keeps serving
            self.app.say(f"error serving {url.path}: {type(exc).__name__}: {exc}")
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")

    do_HEAD = do_GET

    def _media(self, wid: str, kind: str) -> None:
        media = self.app.media(wid)
        body = media.png if kind == "mel.png" else media.ogg
        if not body:
            return self._error(HTTPStatus.NOT_FOUND, media.note or f"no media for {wid}")
        ctype = MEDIA_KINDS[kind]
        start, end = 0, len(body) - 1
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes=") and "," not in rng:       # one byte range (media elements ask for them)
            a, _, b = rng.removeprefix("bytes=").partition("-")
            try:
                if a:
                    start, end = int(a), min(int(b), end) if b else end
                else:
                    start = max(0, len(body) - int(b))
            except ValueError:
                start = -1
            if not 0 <= start <= end:
                return self._send(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", ctype,
                                  {"Content-Range": f"bytes */{len(body)}"})
            return self._send(HTTPStatus.PARTIAL_CONTENT, body[start:end + 1], ctype,
                              {"Content-Range": f"bytes {start}-{end}/{len(body)}", "Accept-Ranges": "bytes"})
        return self._send(HTTPStatus.OK, body, ctype, {"Accept-Ranges": "bytes"})

    # ------------------------------------------------------------------ POST
    def do_POST(self) -> None:   # noqa: N802 - http.server's name
        if not self._allowed_host():
            return self._error(HTTPStatus.FORBIDDEN, "this server answers only http://127.0.0.1 (or localhost)")
        origin = self.headers.get("Origin")
        host = self.headers.get("Host", "")
        if origin is not None and origin != f"http://{host}":
            return self._error(HTTPStatus.FORBIDDEN, f"refused a request from another site ({origin})")
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            return self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON (Content-Type: application/json)")
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if 0 <= length <= 65536 else None
            if not isinstance(body, dict):
                raise ValueError("a JSON object of at most 64 KB")
        except ValueError as exc:
            return self._error(HTTPStatus.BAD_REQUEST, f"bad request body: {exc}")
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path == "/label":
                return self._json(HTTPStatus.OK, self.app.label(str(body.get("window_id", "")),
                                                                str(body.get("label", ""))))
            if path == "/undo":
                return self._json(HTTPStatus.OK, self.app.undo())
            if path == "/next":
                return self._json(HTTPStatus.OK, self.app.next_page())
            return self._error(HTTPStatus.NOT_FOUND, f"no action {path}")
        except UserInputError as exc:
            return self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except Exception as exc:   # noqa: BLE001 - a failed write is shown on the page and said on the terminal
            what = f"{type(exc).__name__}: {exc}" if not isinstance(exc, StackError) else str(exc)
            self.app.say(f"error: {path} failed: {what}")
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, what)


def make_server(port: int) -> ThreadingHTTPServer:
    """A threading HTTP server bound to 127.0.0.1:``port`` (0: a free port), not serving yet (its app is set by
    :func:`serve`). UserInputError naming the port when it is taken."""
    handler = type("LabelHandler", (_Handler,), {})
    try:
        server = ThreadingHTTPServer((HOST, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserInputError(f"port {port} on {HOST} is in use (another label server?); pass --port 0 for a free "
                                 "port, or another number") from None
        raise
    server.daemon_threads = True
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://{HOST}:{server.server_address[1]}/"


def serve(server: ThreadingHTTPServer, app: LabelApp) -> None:
    """Answer requests with ``app`` until interrupted (Ctrl-C raises KeyboardInterrupt here); closes the socket."""
    server.RequestHandlerClass.app = app
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


# ---------------------------------------------------------------------------- the job
@dataclass(frozen=True)
class AppSettings:
    """What ``pipelines.label`` serves: one class, one annotator, a view, an optional query and audio folder."""

    store_dir: Path
    primary_label: str
    annotator: str
    features: str = "birdnet"
    query: tuple[str, ...] = ()
    data_dir: Path | None = None
    port: int = 8765
    session: str | None = None


def _prepare(settings: AppSettings) -> Path:
    """Before the server starts: register ``user_labels`` (read-write, for a moment), check the class and the
    audio folder. Returns the audio folder."""
    from embed.job import data_dir_of
    from featurestore.store import FeatureStore
    from featurestore.user_labels import ensure_table
    from reports.error_page import check_data_dir

    with FeatureStore.open(settings.store_dir, create=False) as store:
        ensure_table(store)
        if store.has_table("taxonomy") and store.first("SELECT 1 FROM taxonomy WHERE primary_label = ?",
                                                       [settings.primary_label]) is None:
            some = [r[0] for r in store.rows("SELECT primary_label FROM taxonomy ORDER BY 1 LIMIT 5")]
            raise UserInputError(f"--class {settings.primary_label!r} is not in the store's taxonomy (e.g. "
                                 f"{', '.join(some)})")
        data_dir = (Path(settings.data_dir).expanduser().resolve() if settings.data_dir else data_dir_of(store))
    check_data_dir(data_dir, given=bool(settings.data_dir), instead=" (the page plays and draws the windows from it)")
    return data_dir


def run_label_app(settings: AppSettings, *, say: Callable[[str], object] = print, bars=None, params=None,
                  on_url: Callable[[str], object] | None = None) -> None:
    """The ``pipelines.label --class`` job: prepare the store, listen on 127.0.0.1 (the URL goes to ``on_url``, else
    ``say``, before the first page is built, so it is the job's first line), build the loop and its first page,
    then serve until Ctrl-C (KeyboardInterrupt propagates: every answered click is already stored)."""
    from featurestore.store import FeatureStore
    from models.probe import LabelLoop, ProbeParams

    data_dir = _prepare(settings)
    server = make_server(settings.port)
    try:
        (on_url or say)(f"labelling {settings.primary_label} at {url_of(server)}  (open it in a browser; Ctrl-C stops; "
                        "every click is stored as it is made)")
        store: FeatureStore = FeatureStore.open(settings.store_dir, create=False, read_only=True)
        try:
            t0 = time.monotonic()
            loop = LabelLoop(store, settings.features, settings.primary_label, settings.annotator,
                             query=list(settings.query) or None, params=params or ProbeParams(),
                             session=settings.session, bars=bars)
            app = LabelApp(loop, data_dir, primary_label=settings.primary_label, annotator=settings.annotator,
                           features=settings.features, say=say, release=store.release_catalog)
            say(f"first page ready in {time.monotonic() - t0:.1f} s; waiting for clicks at {url_of(server)}")
            serve(server, app)
        finally:
            store.close()
    finally:
        server.server_close()


def interrupted_words(argv: list[str]) -> str:
    """What Ctrl-C keeps in ``python -m pipelines.label``, in the words of the mode ``argv`` asks for."""
    if any(a.startswith(("--import", "--export")) for a in argv):
        return ("interrupted; nothing written (an import is stored whole or not at all, an export renamed into place "
                "only when whole)")
    return "stopped; every click is already stored (run the same command again to go on labelling)"
