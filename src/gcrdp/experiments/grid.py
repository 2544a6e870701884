"""Experiment grids: ``gcrdp experiment CONFIG`` runs datasets × shots × methods × seeds, one
results file per run, resumable.

A grid config (JSON)::

    {
      "name": "paper",
      "output_dir": "runs/paper",                 # default: runs/<name>
      "defaults": {"shots": [0, 1, 3, 5], "seeds": [0, 1, 2, 3, 4]},   # any RunConfig keys
      "datasets": {                               # label -> RunConfig keys for that dataset
        "twemoji": {"dataset": "twemoji"},
        "wikipedia": {"dataset": "wikipedia", "dataset_options": {"root": "data/wikipedia"}},
        "wikipedia-standard": {"dataset": "wikipedia", "protocol": "standard",
                               "dataset_options": {"root": "data/wikipedia"}}
      },
      "methods": ["cca", "gap-infonce", "gcrdp", "gcrdp@nogmm"],
      "method_options": {"gcrdp@nogmm": {"use_gmm": false}},
      "skip": [{"dataset": "wikipedia", "method": "zero-shot"},      # optional exclusions;
               {"method": ["gcrdp@k5"], "shots": [0, 1]}]          # a list matches any item
    }

``"preregistration": "path/to/decision.md"`` (relative to the config's folder) names the decision
file that judges the grid's runs (:mod:`gcrdp.experiments.prereg`): the grid refuses to run while
that file has uncommitted changes, every run records its SHA-256, its commit and the run's start
time, and a stored run recorded under another version of it counts as changed.

A dataset entry may say ``"optional": true``: when its ``root``/``path`` does not exist, its
runs are left out (listed as unavailable in the returned summary) instead of failing — for
grids such as ``configs/reproduce.json`` that use whatever benchmark data is present.

Each run — one (dataset label, method entry, shots, seed) — is ``run_experiment`` with single
values, written atomically to ``<output_dir>/runs/<dataset label>/<method entry>/
shots<N>-seed<S>.json`` (the usual results format: resolved config, provenance, the record,
its summary) plus the grid's ``grid`` block (label, cell). A run whose file exists and whose
stored config equals the cell's config is skipped, so an interrupted grid continues where it
stopped and a finished one does nothing; a stored file whose config differs (the grid changed)
is an error unless ``rerun_changed`` — the old result is never silently mixed with new ones.
Datasets are loaded (and features extracted) once per dataset label, before its runs. A paths
in ``dataset_options`` that is relative is taken from the config file's folder.

``standard`` protocol datasets run shots 0 only. Progress: a bar over all runs, with the time
left estimated from the mean time of the runs done so far per method.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..utils.io import atomic_write_json
from .config import RunConfig

log = logging.getLogger(__name__)

GRID_KEYS = {"name", "output_dir", "defaults", "datasets", "methods", "method_options", "skip", "description", "preregistration"}
_PATH_OPTIONS = ("root", "path", "features_file", "images_dir", "captions_file", "class_split")


@dataclass(frozen=True)
class Cell:
    """One run of a grid."""

    dataset: str
    method: str
    shots: int
    seed: int

    def relpath(self) -> Path:
        return Path("runs") / self.dataset / self.method / f"shots{self.shots}-seed{self.seed}.json"


@dataclass
class Grid:
    name: str
    output_dir: Path
    datasets: dict[str, dict[str, Any]]
    methods: list[str]
    method_options: dict[str, dict[str, Any]]
    defaults: dict[str, Any]
    skip: list[dict[str, Any]]
    source: Path | None = None
    optional: set[str] = field(default_factory=set)
    preregistration: Path | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> Grid:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"Grid config not found: {path}") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"Grid config {path} is not valid JSON: {exc}") from None
        return cls.from_dict(raw, base=path.parent, source=path)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base: Path | None = None, source: Path | None = None) -> Grid:
        datasets, methods = _checked_shape(raw)
        base = base or Path(".")
        resolved = {}
        optional = set()
        for label, entry in datasets.items():
            resolved[label], is_optional = _resolved_dataset(label, entry, base)
            if is_optional:
                optional.add(label)
        name = str(raw.get("name") or (source.stem if source else "grid"))
        out = Path(raw.get("output_dir") or Path("runs") / name)
        prereg_path = _preregistration(raw.get("preregistration"), base)
        grid = cls(
            name=name,
            output_dir=out,
            datasets=resolved,
            methods=methods,
            method_options=dict(raw.get("method_options") or {}),
            defaults=dict(raw.get("defaults") or {}),
            skip=list(raw.get("skip") or []),
            source=source,
            optional=optional,
            preregistration=prereg_path,
        )
        unknown = sorted(set(grid.method_options) - set(methods))
        if unknown:
            raise ConfigError(f"method_options for {unknown}, which are not in 'methods' {methods}.")
        for label in datasets:
            grid.run_config(label, methods[0], grid.shots_for(label)[0], grid.seeds_for(label)[0])  # validate early
        return grid

    # -------------------------------------------------------------------- cells
    def _base(self, label: str) -> dict[str, Any]:
        raw = {**self.defaults, **self.datasets[label]}
        for k in ("methods", "method_options"):
            raw.pop(k, None)
        return raw

    def shots_for(self, label: str) -> list[int]:
        cfg = RunConfig.from_dict({**self._base(label)})
        return [0] if cfg.protocol == "standard" else list(cfg.shots)

    def seeds_for(self, label: str) -> list[int]:
        return list(RunConfig.from_dict({**self._base(label)}).seeds)

    def run_config(self, label: str, method: str, shots: int, seed: int) -> RunConfig:
        raw = self._base(label)
        raw.update({"methods": [method], "shots": [shots], "seeds": [seed]})
        if method in self.method_options:
            raw["method_options"] = {method: self.method_options[method]}
        return RunConfig.from_dict(raw)

    def skipped(self, cell: Cell) -> bool:
        """A ``skip`` rule matches a cell when every key matches: equal to the value, or one of
        its items when the value is a list."""
        for rule in self.skip:
            if all(getattr(cell, k, None) in (v if isinstance(v, list) else [v]) for k, v in rule.items()):
                return True
        return False

    def available(self, label: str) -> bool:
        """False for an optional dataset whose ``root``/``path`` does not exist."""
        if label not in self.optional:
            return True
        opts = self.datasets[label].get("dataset_options") or {}
        paths = [opts[k] for k in ("root", "path") if isinstance(opts.get(k), str)]
        return all(Path(p).expanduser().exists() for p in paths)

    def select(self, labels: list[str]) -> None:
        """Keep only the dataset labels ``labels`` (``gcrdp experiment --datasets``)."""
        unknown = sorted(set(labels) - set(self.datasets))
        if unknown:
            raise ConfigError(f"Unknown dataset label(s) {unknown}; the grid has {sorted(self.datasets)}.")
        self.datasets = {k: v for k, v in self.datasets.items() if k in labels}

    def select_methods(self, entries: list[str]) -> None:
        """Keep only the method entries ``entries`` (``gcrdp experiment --methods``)."""
        unknown = sorted(set(entries) - set(self.methods))
        if unknown:
            raise ConfigError(f"Unknown method entr(ies) {unknown}; the grid has {self.methods}.")
        self.methods = [m for m in self.methods if m in entries]

    def cells(self) -> list[Cell]:
        out = []
        for label in self.datasets:
            if not self.available(label):
                continue
            for shots in self.shots_for(label):
                for method in self.methods:
                    for seed in self.seeds_for(label):
                        c = Cell(label, method, shots, seed)
                        if not self.skipped(c):
                            out.append(c)
        return out


_DEFAULTS = RunConfig().to_dict()


def _stored_config(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc["config"] if doc.get("records") else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stored_decision(path: Path) -> str | None:
    """The SHA-256 of the decision file a stored run recorded (None: none)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc["grid"]["preregistration"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _eta(done: dict[str, list[float]], todo: list[Cell]) -> float | None:
    if not done:
        return None
    overall = [t for ts in done.values() for t in ts]
    mean_all = sum(overall) / len(overall)
    return sum((sum(done[c.method]) / len(done[c.method])) if c.method in done else mean_all for c in todo)


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run_grid(
    grid: Grid, *, progress: bool = True, rerun_changed: bool = False, on_cell: Callable[[Cell, dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run every cell of ``grid`` not already done; return ``{"done", "skipped", "ran", "files"}``."""
    from ..data.checks import check_class_sizes, check_class_split
    from ..data.registry import load_dataset
    from ..training.loop import observe_epochs
    from .progress import epoch_status
    from .runner import describe_splits, load_features, plan_splits, run_experiment

    decision: dict[str, Any] | None = None
    if grid.preregistration is not None:
        from .prereg import decision_record, require_committed

        decision = decision_record(grid.preregistration)
        require_committed(decision)  # the rule first, then the runs it judges
        decision.pop("uncommitted", None)
    cells = grid.cells()
    todo, done_files = [], []
    for c in cells:
        path = grid.output_dir / c.relpath()
        if path.exists():
            stored = _stored_config(path)
            want = grid.run_config(c.dataset, c.method, c.shots, c.seed).to_dict()
            same_config = stored is not None and {**_DEFAULTS, **stored} == want  # keys added since: defaults
            same_rule = decision is None or _stored_decision(path) == decision["sha256"]
            if same_config and same_rule:
                done_files.append(path)
                continue
            if not rerun_changed:
                why = (
                    f"holds a run judged by another version of the decision file {grid.preregistration} (or by none)"
                    if same_config
                    else f"holds a run of another configuration than the grid's cell ({c.dataset}, {c.method}, shots={c.shots}, "
                    f"seed={c.seed}): the grid changed since it was written"
                )
                raise DataError(f"{path} {why}. Use a new output_dir, delete the file, or pass --rerun-changed.")
        todo.append(c)
    n_total = len(cells)
    log.info("grid %s: %d runs, %d done, %d to run", grid.name, n_total, len(done_files), len(todo))
    bar = None
    if progress and todo:
        from ..utils.progress import progress_bar

        bar = progress_bar(len(todo), desc=f"grid {grid.name}", unit="run", dynamic_ncols=True)  # the runs to do now
    times: dict[str, list[float]] = {}
    loaded: dict[str, tuple[Any, Any]] = {}
    ran = []
    try:
        for i, c in enumerate(todo):
            cfg = grid.run_config(c.dataset, c.method, c.shots, c.seed)
            if c.dataset not in loaded:
                loaded.clear()  # one dataset's features in memory at a time
                ds = load_dataset(cfg.dataset, **cfg.dataset_options)
                shot_values = grid.shots_for(c.dataset) if cfg.protocol != "standard" else [0]
                check_class_sizes(ds, shot_values, cfg.protocol, allow=cfg.allow_small_classes)  # before any extraction
                check_class_split(ds, cfg.protocol, validate=cfg.val_fraction > 0)
                splits = plan_splits(ds, cfg, shot_values, grid.seeds_for(c.dataset))
                if progress:
                    print(f"[{c.dataset}] " + describe_splits(ds, splits), file=sys.stderr, flush=True)
                loaded[c.dataset] = (ds, load_features(ds, cfg, progress=progress))
                if ds.class_split is not None and cfg.protocol != "standard":  # the split a rerun can pin
                    from ..data.splits import class_split_document

                    atomic_write_json(
                        grid.output_dir / c.relpath().parent.parent / "class_split.json",
                        class_split_document(
                            ds.class_split,
                            note=(
                                f"The class split of dataset label {c.dataset!r} "
                                f"({ds.meta.get('class_split_source', 'dataset')}); pass it as "
                                "class_split to pin it."
                            ),
                        ),
                    )
            ds, feats = loaded[c.dataset]
            t0 = time.perf_counter()
            started = _now()
            observer = None
            if bar is not None and not bar.disable:
                here = f"{c.dataset} {c.method} {c.shots}-shot s{c.seed}"
                observer = lambda info, here=here: bar.set_postfix_str(  # noqa: E731
                    f"{here}: {epoch_status(info)}", refresh=True
                )
            with observe_epochs(observer):
                res = run_experiment(cfg, None, progress=False, dataset=ds, features=feats)
            res["grid"] = {
                "name": grid.name,
                "dataset_label": c.dataset,
                "method": c.method,
                "shots": c.shots,
                "seed": c.seed,
                "config_file": str(grid.source) if grid.source else None,
                **({"preregistration": {**decision, "started_at": started}} if decision is not None else {}),
            }
            path = grid.output_dir / c.relpath()
            atomic_write_json(path, res)
            times.setdefault(c.method, []).append(time.perf_counter() - t0)
            ran.append(path)
            if on_cell is not None:
                on_cell(c, res)
            if bar is not None:
                rec = res["records"][0]["test"]
                bar.set_postfix_str(
                    f"{c.dataset} {c.method} {c.shots}-shot s{c.seed}: "
                    f"{100 * rec['mean_map']:.1f}  left ~{_fmt_seconds(_eta(times, todo[i + 1 :]))}"
                )
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return {
        "total": n_total,
        "already_done": len(done_files),
        "ran": len(ran),
        "files": [str(p) for p in done_files + ran],
        "output_dir": str(grid.output_dir),
        "unavailable": [label for label in grid.datasets if not grid.available(label)],
    }


def collect_results(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Every results file under ``paths`` (files, or folders searched for ``*.json`` with
    records), each returned as the loaded dict with ``_path``."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.rglob("*.json") if not q.name.startswith("."))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"Results path not found: {p}")
    out = []
    for f in files:
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("records"), list) and doc.get("config"):
            doc["_path"] = str(f)
            out.append(doc)
    if not out:
        raise DataError(f"No results files (results.json or grid runs) under {', '.join(map(str, paths))}.")
    return out


def _checked_shape(raw: Any) -> tuple[dict[str, Any], list[str]]:
    """A grid config's keys, ``datasets`` and ``methods`` checked: (datasets, methods)."""
    if not isinstance(raw, dict):
        raise ConfigError("A grid config must be a JSON object.")
    extra = sorted(set(raw) - GRID_KEYS)
    if extra:
        raise ConfigError(f"Unknown grid config key(s) {extra}. Known keys: {', '.join(sorted(GRID_KEYS))}.")
    for key in ("datasets", "methods"):
        if not raw.get(key):
            raise ConfigError(f"A grid config needs a non-empty {key!r}.")
    datasets = raw["datasets"]
    if not isinstance(datasets, dict) or not all(isinstance(v, dict) for v in datasets.values()):
        raise ConfigError('\'datasets\' must map a label to an object of run settings (e.g. {"twemoji": {"dataset": "twemoji"}}).')
    methods = list(raw["methods"])
    if len(set(methods)) != len(methods):
        raise ConfigError(f"'methods' lists a method twice: {methods}.")
    for label in datasets:
        if "/" in label or label.startswith("."):
            raise ConfigError(f"Dataset label {label!r} must not contain '/' or start with '.'.")
    return datasets, methods


def _resolved_dataset(label: str, entry: dict[str, Any], base: Path) -> tuple[dict[str, Any], bool]:
    """A dataset entry with its relative paths resolved against the config's folder (when they
    exist there), and whether it is optional."""
    entry = json.loads(json.dumps(entry))
    flag = entry.pop("optional", False)
    if not isinstance(flag, bool):
        raise ConfigError(f"Dataset {label!r}: 'optional' must be true or false, got {flag!r}.")
    opts = entry.get("dataset_options") or {}
    for k in _PATH_OPTIONS:
        if isinstance(opts.get(k), str) and not Path(opts[k]).expanduser().is_absolute():
            candidate = base / opts[k]
            opts[k] = str(candidate.resolve()) if candidate.exists() else opts[k]
    if opts:
        entry["dataset_options"] = opts
    return entry, flag


def _preregistration(prereg: Any, base: Path) -> Path | None:
    """The decision file a grid names (relative to the config's folder), checked to exist."""
    if prereg is None:
        return None
    if not isinstance(prereg, str) or not prereg:
        raise ConfigError(f"'preregistration' must be the path of the decision file, got {prereg!r}.")
    path = Path(prereg).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise ConfigError(f"The grid's pre-registration file {path} does not exist.")
    return path
