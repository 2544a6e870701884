"""NUS-WIDE ``source="raw"``: the release with its tags and images (found by list path, file stem or
Flickr photo id)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ....errors import DataError, format_list
from ...problems import Problem, Problems
from ...types import Sample
from ..build import IMAGE_EXTENSIONS, RawDataset, index_images
from .common import TAG_FILES, Subset
from .release import Release, ReleaseRead, find_file, read_lines, read_release, release_dataset

# Flickr file names of downloaded images: <id>, <id>_<secret>[_<size>], <n>_<id>_<secret>[_<size>],
# <nnnn>_<id>: parts of digits and hex, an optional one-letter size suffix
_DOWNLOADED = re.compile(r"^[0-9a-f]+(?:_[0-9a-f]+)*(?:_[a-z])?$", re.I)


def _photo_ids(stem: str) -> list[str]:
    """The Flickr photo ids a downloaded image's file name may carry: every all-digit part of a
    name of the forms ``<id>``, ``<id>_<secret>[_<size>]``, ``<n>_<id>_<secret>[_<size>]`` or
    ``<nnnn>_<id>`` (which part is the id cannot be told from the name alone: an all-digit
    secret looks like an id; lookups are by a known photo id, so an extra candidate only
    matters if it is another image's id, and then both files are named as a problem)."""
    if not _DOWNLOADED.match(stem):
        return []
    parts = stem.split("_")
    if len(parts) > 1 and len(parts[-1]) == 1 and parts[-1].isalpha():
        parts = parts[:-1]
    return [p for p in parts if p.isdigit()]


def _photo_index(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """``({photo id: path}, {photo id: [paths]})`` of the images under ``folder`` named by photo
    id; the second holds the ids that several files claim (left out of the first)."""
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            for pid in dict.fromkeys(_photo_ids(p.stem)):
                found.setdefault(pid, []).append(p)
    return {k: v[0] for k, v in found.items() if len(v) == 1}, {k: v for k, v in found.items() if len(v) > 1}


@dataclass
class _Tags:
    """The tags file: its lines (line i: image i of the image list), the lines that were not
    UTF-8, and whether its lines start with the photo ids (then checked against the images)."""

    path: Path
    lines: list[str]
    n_latin1: int
    check_ids: bool


def _read_tags(root: Path, tags_file: str | Path | None, rel: Release, photo: list[str]) -> _Tags:
    tpath = Path(tags_file).expanduser() if tags_file is not None else find_file(root, TAG_FILES, "the tags (NUS_WID_Tags/All_Tags.txt)")
    if not tpath.is_file():
        raise DataError(f"NUS-WIDE: tags file not found: {tpath}")
    tag_lines, n_latin1 = read_lines(tpath, fallback=True)
    if len(tag_lines) != len(rel.entries):
        raise DataError(
            f"NUS-WIDE: {tpath} has {len(tag_lines)} lines but {rel.all_path} lists {len(rel.entries)} "
            f"images; line i of {tpath.name} must be the tags of image i of {rel.all_path.name}."
        )
    first = [ln.split(maxsplit=1)[0] if ln.strip() else "" for ln in tag_lines]
    check_ids = sum(a == b for a, b in zip(first, photo)) > 0
    if not check_ids and any(first) and all(a.isdigit() for a in first if a):
        r0 = next(i for i, a in enumerate(first) if a)
        raise DataError(
            f"NUS-WIDE: {tpath} starts its lines with photo ids, but none is the photo id of its {rel.all_path.name} line "
            f"(line {r0 + 1}: {first[r0]!r}, the image is photo {photo[r0]!r}): it is not the tags file of this image list."
        )
    # lines of tags only (no photo id first, e.g. a tags_file= written by other code): every token is a tag
    return _Tags(tpath, tag_lines, n_latin1, check_ids)


class _ImageFinder:
    """Finds an image of the list under ``folder``: by its list path, else its file stem, else
    its Flickr photo id (the indexes are built when first needed); counts how each was found."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.found_by = {"list path": 0, "file stem": 0, "photo id": 0}
        self._by_stem: dict[str, Path] | None = None
        self._by_photo: tuple[dict[str, Path], dict[str, list[Path]]] | None = None

    def find(self, entry: str, photo: str) -> tuple[Path | None, str | None]:
        """``(path, None)``, or ``(None, why not)``."""
        path = self.folder / entry
        if path.is_file():
            self.found_by["list path"] += 1
            return path, None
        if self._by_stem is None:
            self._by_stem = index_images(self.folder)
        got = self._by_stem.get(Path(entry).stem)
        if got is not None:
            self.found_by["file stem"] += 1
            return got, None
        if self._by_photo is None:
            self._by_photo = _photo_index(self.folder)
        got = self._by_photo[0].get(photo)
        if got is not None:
            self.found_by["photo id"] += 1
            return got, None
        if photo in self._by_photo[1]:
            names = ", ".join(str(p.relative_to(self.folder)) for p in self._by_photo[1][photo][:3])
            return None, f"image {entry!r}: several files are named by its photo id {photo} ({names})"
        return None, f"image {entry!r} not found (nor a file named by its photo id {photo})"


def read_raw(root: Path, img_dir: Path, tags_file: str | Path | None, subset: Subset) -> RawDataset:
    """Source ``raw``: the release's lists and labels, its tags (the texts) and images."""
    rel = read_release(root, subset, "raw")
    photo = [Path(e).stem.rsplit("_", 1)[-1] for e in rel.entries]
    tags = _read_tags(root, tags_file, rel, photo)
    if not img_dir.is_dir():
        raise DataError(f"NUS-WIDE source 'raw' needs the images in {img_dir} (any depth; or pass images_dir=).")
    finder = _ImageFinder(img_dir)
    read = ReleaseRead([], Problems(f"NUS-WIDE ({root})"), [], "have no tags", {})
    missing: list[Problem] = []
    for r in np.flatnonzero(rel.keep).tolist():
        sid, where = rel.sample_id(r), rel.where(r)
        tokens = tags.lines[r].split()
        bad = rel.row_problems(r, read.problems)
        if tags.check_ids and tokens and tokens[0] != photo[r]:
            read.problems.add(where, f"{tags.path.name} line {r + 1} is photo {tokens[0]!r} but the image is photo {photo[r]!r}", sid)
            bad = True
        text = " ".join(tokens[1 if tags.check_ids else 0 :])
        if not text:
            if not bad:  # a sample with problems is reported (or skipped) as such, not counted twice
                read.without_tags.append(sid)
            continue
        path, why = finder.find(rel.entries[r], photo[r])
        if why is not None:
            missing.append(Problem(where, sid, why))
        read.samples.append(Sample(id=sid, text=text, labels=rel.labels(r), split=rel.split_of[r] or "train", image=path))
    read.problems.add_group(f"missing image files under {img_dir}", missing)
    if not read.samples:
        raise DataError(
            f"NUS-WIDE: no image of {rel.all_path} is in the subset ({rel.how}: {format_list(rel.chosen_names)})"
            + (f" with tags ({len(read.without_tags)} have none)." if read.without_tags else ".")
        )
    read.meta = {
        "recognised": (
            f"the official release: {rel.all_path.name} + {rel.labels_from} + {tags.path.name}; images found by "
            + ", ".join(f"{k} {v}" for k, v in finder.found_by.items() if v)
        ),
        "tags_file": str(tags.path),
        "tag_lines_not_utf8": tags.n_latin1,
        "tag_photo_ids_checked": tags.check_ids,
        "images_dir": str(img_dir),
        "images_found_by": finder.found_by,
    }
    return release_dataset(root, rel, subset, "raw", read)
