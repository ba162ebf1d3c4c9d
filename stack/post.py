"""Post-processing ops: named, parameterised steps applied in an explicit order after a stacker.

A post-processing chain is a list of ``(name, params)`` pairs, applied first to last to a
``(windows, classes)`` probability matrix::

    [("smooth", {"kernel": [0.25, 0.5, 0.25], "by_group": {"Amphibia": {"kernel": [1, 1, 1, 1, 1]}}}),
     ("filescale", {"a": 0.5, "top_k": 2}),
     ("power", {"gamma": 0.8})]

Ops (``z = logit(p)``, computed in float64 with ``p`` clipped to ``[EPS, 1 - EPS]``):

* ``smooth`` — ``kernel`` (odd length, centred, non-negative, normalised to sum 1) convolved along
  time within each file; ``space`` ``prob`` smooths ``p``, ``logit`` smooths ``z`` and maps back.
  A neighbour that does not exist (file edge, or a window missing from the matrix) is replaced by the
  nearest present window on that side, so a file edge repeats the edge window's own value.
* ``filescale`` — the file's top-k mean per class ``m`` (mean of the ``top_k`` largest values of
  the class in the file, all of them if the file is shorter): ``form`` ``prob`` gives
  ``p * (a + (1 - a) * m)``; ``form`` ``logit`` gives ``sigmoid(a * z + (1 - a) * m_z)`` with
  ``m_z`` the top-k mean of ``z``. ``a = 1`` is the identity in both forms.
* ``power`` — ``p ** gamma``.
* ``temperature`` — ``sigmoid(z / temperature)``.

``power`` and ``temperature`` are monotone per class, so alone they never change a per-class AUC;
they matter before ``smooth`` or ``filescale``, which mix values across windows.

Every op takes ``by_group``: ``{taxon group: {param: value}}`` overrides for the classes of that
group (e.g. a wider kernel for frogs and insects, which call continuously), so per-taxon-group
settings are one mechanism for all ops. Unknown op names, parameter keys, groups or invalid values
raise :class:`~featurestore.errors.UserInputError` naming the choices.

Pure numpy (plus :mod:`featurestore.windows` for ids): usable on the inference path. Every op is
vectorised over windows and classes; the chain never modifies its input array.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from featurestore.errors import UserInputError
from featurestore.windows import WINDOW_SECONDS, file_of, start_of

EPS = 1e-9   # probabilities are clipped to [EPS, 1 - EPS] before a logit: float32 values below 1 stay distinct


def logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` in float64 with ``p`` clipped to ``[EPS, 1 - EPS]`` (finite everywhere)."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(q) - np.log1p(-q)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))`` in float64 without overflow warnings."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


# ---------------------------------------------------------------------------- file layout
class FileLayout:
    """Which rows share a file and which row is each row's time neighbour.

    Rows are windows identified by window id (``<source>/<file>@<start>``). Rows with the same file
    and the same ``groups`` value (e.g. a fold, so that nothing is mixed across folds) form one
    *file block*. The neighbour at offset ``+1`` of a row is the row of the same block starting
    ``WINDOW_SECONDS`` later, if present; otherwise the row itself (a file edge, or a gap where a
    window is missing, repeats the row's own value). Offsets ``+-d`` walk ``d`` such steps, stopping
    at the first edge or gap.
    """

    def __init__(self, window_ids: Sequence[str], groups: Sequence | None = None):
        ids = [str(w) for w in window_ids]
        self.n = len(ids)
        files = np.array([file_of(w) for w in ids], dtype=object)
        starts = np.array([start_of(w) for w in ids], dtype=np.int64)
        if groups is not None:
            g = np.asarray(groups)
            if len(g) != self.n:
                raise UserInputError(f"{len(g)} group values for {self.n} windows")
            files = np.array([f"{a}\x00{b}" for a, b in zip(g.tolist(), files.tolist(), strict=True)], dtype=object)
        if self.n:
            _, self.file_index = np.unique(files.astype(str), return_inverse=True)
            self.file_index = self.file_index.astype(np.int64).ravel()
        else:
            self.file_index = np.zeros(0, np.int64)
        self.n_files = int(self.file_index.max()) + 1 if self.n else 0
        self.starts = starts
        order = np.lexsort((starts, self.file_index))
        if self.n > 1 and np.any((np.diff(self.file_index[order]) == 0) & (np.diff(starts[order]) == 0)):
            i = order[np.flatnonzero((np.diff(self.file_index[order]) == 0) & (np.diff(starts[order]) == 0))[0]]
            raise UserInputError(f"window {ids[i]!r} appears twice")
        nxt = np.arange(self.n)
        prv = np.arange(self.n)
        if self.n > 1:
            adjacent = (np.diff(self.file_index[order]) == 0) & (np.diff(starts[order]) == WINDOW_SECONDS)
            nxt[order[:-1][adjacent]] = order[1:][adjacent]
            prv[order[1:][adjacent]] = order[:-1][adjacent]
        self._step = {1: nxt, -1: prv}
        self._cache: dict[int, np.ndarray] = {0: np.arange(self.n), 1: nxt, -1: prv}
        self._block_order = np.argsort(self.file_index, kind="stable")
        self._sorted_block = self.file_index[self._block_order]
        self._block_size = np.bincount(self.file_index, minlength=self.n_files).astype(np.float64)
        self._block_first = np.concatenate([[0], np.cumsum(self._block_size)[:-1]]).astype(np.int64)

    def neighbour(self, offset: int) -> np.ndarray:
        """Row index of each row's neighbour ``offset`` windows later (earlier if negative); see the class doc."""
        if offset not in self._cache:
            inner = self.neighbour(offset - 1 if offset > 0 else offset + 1)
            self._cache[offset] = self._step[1 if offset > 0 else -1][inner]
        return self._cache[offset]

    def file_reduce(self, values: np.ndarray, how: str, top_k: int = 2) -> np.ndarray:
        """Per file block and column: ``max``, ``mean`` or ``topk`` (mean of the ``top_k`` largest, all
        when the block is shorter), broadcast back to each row: the result has the shape of ``values``."""
        v = np.asarray(values, dtype=np.float64)
        if v.shape[0] != self.n:
            raise UserInputError(f"{v.shape[0]} rows for a layout of {self.n} windows")
        if self.n == 0:
            return v.copy()
        flat = v.reshape(self.n, -1)
        by_block = flat[self._block_order]
        if how == "max":
            out = np.maximum.reduceat(by_block, self._block_first, axis=0)
        elif how == "mean":
            out = np.add.reduceat(by_block, self._block_first, axis=0) / self._block_size[:, None]
        elif how == "topk":
            if top_k < 1:
                raise UserInputError(f"top_k must be >= 1; got {top_k}")
            # sort each column by (block, value descending) at once: the integer part of the key is the block
            lo, hi = flat.min(axis=0), flat.max(axis=0)
            key = self.file_index[:, None] + 0.5 * (1.0 - (flat - lo) / (hi - lo + 1.0))
            ranked = np.take_along_axis(flat, np.argsort(key, axis=0, kind="stable"), axis=0)
            keep = (np.arange(self.n) - self._block_first[self._sorted_block]) < top_k
            out = np.add.reduceat(np.where(keep[:, None], ranked, 0.0), self._block_first, axis=0)
            out /= np.minimum(self._block_size, top_k)[:, None]
        else:
            raise UserInputError(f"unknown file statistic {how!r}; choose from max, mean, topk")
        return out[self.file_index].reshape(v.shape)


# ---------------------------------------------------------------------------- op parameters
@dataclass(frozen=True)
class SmoothParams:
    kernel: tuple[float, ...] = (0.25, 0.5, 0.25)   # centred weights, odd length, normalised to sum 1
    space: str = "prob"                             # prob | logit

    def check(self) -> SmoothParams:
        k = np.asarray(self.kernel, dtype=np.float64)
        if k.ndim != 1 or len(k) % 2 != 1:
            raise UserInputError(f"smooth: kernel needs an odd number of weights; got {list(self.kernel)}")
        if (k < 0).any() or not np.isfinite(k).all() or k.sum() <= 0:
            raise UserInputError(f"smooth: kernel weights must be finite, >= 0 and not all 0; got {list(self.kernel)}")
        _check_choice("smooth", "space", self.space, ("prob", "logit"))
        return self


@dataclass(frozen=True)
class FileScaleParams:
    a: float = 0.5          # weight kept by the window itself; 1 = identity
    top_k: int = 2
    form: str = "prob"      # prob: p * (a + (1 - a) * m); logit: sigmoid(a * z + (1 - a) * m_z)

    def check(self) -> FileScaleParams:
        if not 0.0 <= self.a <= 1.0:
            raise UserInputError(f"filescale: a must be in [0, 1]; got {self.a}")
        if int(self.top_k) != self.top_k or self.top_k < 1:
            raise UserInputError(f"filescale: top_k must be an integer >= 1; got {self.top_k}")
        _check_choice("filescale", "form", self.form, ("prob", "logit"))
        return self


@dataclass(frozen=True)
class PowerParams:
    gamma: float = 1.0

    def check(self) -> PowerParams:
        if not (np.isfinite(self.gamma) and self.gamma > 0):
            raise UserInputError(f"power: gamma must be > 0; got {self.gamma}")
        return self


@dataclass(frozen=True)
class TemperatureParams:
    temperature: float = 1.0

    def check(self) -> TemperatureParams:
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise UserInputError(f"temperature: temperature must be > 0; got {self.temperature}")
        return self


def _check_choice(op: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserInputError(f"{op}: unknown {key} {value!r}; choose from {', '.join(choices)}")


# ---------------------------------------------------------------------------- op kernels
def smooth(p: np.ndarray, layout: FileLayout, params: SmoothParams) -> np.ndarray:
    """Kernel-weighted mean of each window and its file neighbours (see the module doc)."""
    k = np.asarray(params.kernel, dtype=np.float64)
    k = k / k.sum()
    x = logit(p) if params.space == "logit" else np.asarray(p, dtype=np.float64)
    half = len(k) // 2
    out = np.zeros_like(x)
    for j, w in enumerate(k):
        if w:
            out += w * x[layout.neighbour(j - half)]
    return sigmoid(out) if params.space == "logit" else out


def filescale(p: np.ndarray, layout: FileLayout, params: FileScaleParams) -> np.ndarray:
    """File top-k-mean scaling (see the module doc)."""
    a = float(params.a)
    if params.form == "prob":
        x = np.asarray(p, dtype=np.float64)
        return x * (a + (1.0 - a) * layout.file_reduce(x, "topk", int(params.top_k)))
    z = logit(p)
    return sigmoid(a * z + (1.0 - a) * layout.file_reduce(z, "topk", int(params.top_k)))


def power(p: np.ndarray, layout: FileLayout, params: PowerParams) -> np.ndarray:
    """``p ** gamma``."""
    return np.asarray(p, dtype=np.float64) ** float(params.gamma)


def temperature(p: np.ndarray, layout: FileLayout, params: TemperatureParams) -> np.ndarray:
    """``sigmoid(logit(p) / temperature)``."""
    return sigmoid(logit(p) / float(params.temperature))


@dataclass(frozen=True)
class PostOp:
    params: type
    apply: Callable[[np.ndarray, FileLayout, object], np.ndarray]


POST_OPS: dict[str, PostOp] = {
    "smooth": PostOp(SmoothParams, smooth),
    "filescale": PostOp(FileScaleParams, filescale),
    "power": PostOp(PowerParams, power),
    "temperature": PostOp(TemperatureParams, temperature),
}


# ---------------------------------------------------------------------------- steps and chains
@dataclass(frozen=True)
class PostStep:
    """One op with its default parameters and per-taxon-group overrides (``by_group``)."""

    name: str
    params: object
    by_group: tuple[tuple[str, object], ...] = ()

    def for_group(self, group: str):
        """The parameters that apply to the classes of ``group``."""
        return dict(self.by_group).get(group, self.params)

    def to_json(self) -> list:
        """``[name, params]`` as accepted by :func:`parse_post` (a round trip gives an equal step)."""
        body = _plain(asdict(self.params))
        if self.by_group:
            base = asdict(self.params)
            body["by_group"] = {g: {k: _plain(v) for k, v in asdict(p).items() if v != base[k]}
                                for g, p in self.by_group}
        return [self.name, body]


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _make(op: str, cls: type, overrides: Mapping, base=None):
    """``cls`` (or ``base``) with ``overrides`` applied, values coerced to the fields' types and checked."""
    types = {f.name: type(f.default) for f in fields(cls)}
    unknown = sorted(set(overrides) - set(types))
    if unknown:
        raise UserInputError(f"unknown {op} parameter(s) {unknown}; known: {sorted(types)} and by_group")
    values = {}
    for key, value in overrides.items():
        try:
            if types[key] is tuple:
                values[key] = tuple(float(x) for x in value)
            elif types[key] is int and float(value) != int(float(value)):
                raise ValueError(value)
            else:
                values[key] = types[key](value) if types[key] is not int else int(float(value))
        except (TypeError, ValueError):
            raise UserInputError(f"{op}: {key} must be {types[key].__name__}; got {value!r}") from None
    made = replace(base, **values) if base is not None else cls(**values)
    return made.check()


def parse_post(steps: Sequence | None) -> tuple[PostStep, ...]:
    """Validate a chain: ``[(name, {param: value, "by_group": {group: {param: value}}}), ...]``.

    Accepts already-parsed :class:`PostStep` items too. The order is kept exactly as given.
    """
    out: list[PostStep] = []
    for i, step in enumerate(steps or ()):
        if isinstance(step, PostStep):
            out.append(step)
            continue
        if isinstance(step, str):
            name, raw = step, {}
        else:
            try:
                name, raw = step
            except (TypeError, ValueError):
                raise UserInputError(f"post step {i}: expected (name, params); got {step!r}") from None
        if name not in POST_OPS:
            raise UserInputError(f"unknown post-processing op {name!r}; choose from {', '.join(POST_OPS)}")
        raw = dict(raw or {})
        by_group_raw = raw.pop("by_group", None) or {}
        if not isinstance(by_group_raw, Mapping):
            raise UserInputError(f"{name}: by_group must map taxon group -> parameters; got {by_group_raw!r}")
        cls = POST_OPS[name].params
        params = _make(name, cls, raw)
        by_group = tuple((str(g), _make(name, cls, dict(v or {}), params)) for g, v in sorted(by_group_raw.items()))
        out.append(PostStep(name, params, by_group))
    return tuple(out)


def apply_post(p: np.ndarray, steps: Sequence, layout: FileLayout, class_groups: Sequence[str]) -> np.ndarray:
    """Apply ``steps`` in order to ``p`` ``(windows, classes)``; returns a new float64 array.

    ``class_groups`` gives each class column's taxon group (for ``by_group``); ``layout`` gives the
    file blocks and neighbours of the rows. Columns sharing one setting are processed together.
    """
    parsed = parse_post(steps)
    x = np.asarray(p, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != layout.n:
        raise UserInputError(f"post-processing needs a (windows x classes) matrix of {layout.n} rows; got {x.shape}")
    groups = np.asarray(class_groups, dtype=object)
    if len(groups) != x.shape[1]:
        raise UserInputError(f"{len(groups)} taxon groups for {x.shape[1]} class columns")
    known = set(groups.tolist())
    if not parsed:
        return x.copy()
    for step in parsed:
        unknown = sorted({g for g, _ in step.by_group} - known)
        if unknown:
            raise UserInputError(f"{step.name}: unknown taxon group(s) {unknown} in by_group; "
                                 f"the classes have {sorted(map(str, known))}")
        op = POST_OPS[step.name]
        if not step.by_group:
            x = op.apply(x, layout, step.params)
            continue
        out = np.empty_like(x)
        settings: dict[object, list[int]] = {}
        for c, g in enumerate(groups.tolist()):
            settings.setdefault(step.for_group(g), []).append(c)
        for params, cols in settings.items():
            out[:, cols] = op.apply(x[:, cols], layout, params)
        x = out
    return x
