"""NUS-WIDE ``source="raw"``: the release with its tags and images (found by list path, file stem or
Flickr photo id)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ....errors import DataError, format_list
from ...problems import Problem, Problems
from ...types import ClassSplit, Dataset, Sample
from ..build import IMAGE_EXTENSIONS, index_images
from .common import TAG_FILES
from .release import find_file, finish_release, read_lines, read_release

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


def load_raw(
    root: Path,
    img_dir: Path,
    tags_file: str | Path | None,
    *,
    mode: str,
    top: int | None,
    subset_key: str,
    wanted: list[str] | None,
    class_split: str | Path | ClassSplit | None,
    split_seed: int,
    skip_bad: bool,
) -> Dataset:
    rel = read_release(root, mode=mode, top=top, wanted=wanted, source="raw")
    n = len(rel.entries)
    kept = np.flatnonzero(rel.keep)
    problems = Problems(f"NUS-WIDE ({root})")

    # ---------------------------------------------------------------- tags
    tpath = Path(tags_file).expanduser() if tags_file is not None else find_file(root, TAG_FILES, "the tags (NUS_WID_Tags/All_Tags.txt)")
    if not tpath.is_file():
        raise DataError(f"NUS-WIDE: tags file not found: {tpath}")
    tag_lines, n_latin1 = read_lines(tpath, fallback=True)
    if len(tag_lines) != n:
        raise DataError(
            f"NUS-WIDE: {tpath} has {len(tag_lines)} lines but {rel.all_path} lists {n} "
            f"images; line i of {tpath.name} must be the tags of image i of {rel.all_path.name}."
        )
    first = [ln.split(maxsplit=1)[0] if ln.strip() else "" for ln in tag_lines]
    photo = [Path(e).stem.rsplit("_", 1)[-1] for e in rel.entries]
    ids_match = sum(a == b for a, b in zip(first, photo))
    check_ids = ids_match > 0
    if not check_ids and any(first):
        numeric = [a for a in first if a]
        if all(a.isdigit() for a in numeric):
            r0 = next(i for i, a in enumerate(first) if a)
            raise DataError(
                f"NUS-WIDE: {tpath} starts its lines with photo ids, but none is the photo id of its {rel.all_path.name} line "
                f"(line {r0 + 1}: {first[r0]!r}, the image is photo {photo[r0]!r}): it is not the tags file of this image list."
            )
    # lines of tags only (no photo id first, e.g. a tags_file= written by other code): every token is a tag
    skip_first = 1 if check_ids else 0

    # ---------------------------------------------------------------- images
    if not img_dir.is_dir():
        raise DataError(f"NUS-WIDE source 'raw' needs the images in {img_dir} (any depth; or pass images_dir=).")
    by_stem: dict[str, Path] | None = None
    by_photo: tuple[dict[str, Path], dict[str, list[Path]]] | None = None
    found_by = {"list path": 0, "file stem": 0, "photo id": 0}
    missing: list[Problem] = []
    samples: list[Sample] = []
    without_tags: list[str] = []
    for r in kept.tolist():
        e = rel.entries[r]
        sid, where = rel.sample_id(r), rel.where(r)
        tokens = tag_lines[r].split()
        bad = rel.row_problems(r, problems)
        if check_ids and tokens and tokens[0] != photo[r]:
            problems.add(where, f"{tpath.name} line {r + 1} is photo {tokens[0]!r} but the image is photo {photo[r]!r}", sid)
            bad = True
        text = " ".join(tokens[skip_first:])
        if not text:
            if not bad:  # a sample with problems is reported (or skipped) as such, not counted twice
                without_tags.append(sid)
            continue
        path: Path | None = img_dir / e
        if path is not None and path.is_file():
            found_by["list path"] += 1
        else:
            if by_stem is None:
                by_stem = index_images(img_dir)
            path = by_stem.get(Path(e).stem)
            if path is not None:
                found_by["file stem"] += 1
            else:
                if by_photo is None:
                    by_photo = _photo_index(img_dir)
                path = by_photo[0].get(photo[r])
                if path is not None:
                    found_by["photo id"] += 1
                elif photo[r] in by_photo[1]:
                    names = ", ".join(str(p.relative_to(img_dir)) for p in by_photo[1][photo[r]][:3])
                    missing.append(Problem(where, sid, f"image {e!r}: several files are named by its photo id {photo[r]} ({names})"))
                else:
                    missing.append(Problem(where, sid, f"image {e!r} not found (nor a file named by its photo id {photo[r]})"))
        samples.append(Sample(id=sid, text=text, labels=rel.labels(r), split=rel.split_of[r] or "train", image=path))
    problems.add_group(f"missing image files under {img_dir}", missing)
    if not samples:
        raise DataError(
            f"NUS-WIDE: no image of {rel.all_path} is in the subset ({rel.how}: {format_list(rel.chosen_names)})"
            + (f" with tags ({len(without_tags)} have none)." if without_tags else ".")
        )
    meta = {
        "recognised": (
            f"the official release: {rel.all_path.name} + {rel.labels_from} + {tpath.name}; images found by "
            + ", ".join(f"{k} {v}" for k, v in found_by.items() if v)
        ),
        "tags_file": str(tpath),
        "tag_lines_not_utf8": n_latin1,
        "tag_photo_ids_checked": check_ids,
        "images_dir": str(img_dir),
        "images_found_by": found_by,
    }
    return finish_release(
        root,
        rel,
        samples,
        problems,
        source="raw",
        subset_key=subset_key,
        mode=mode,
        without_tags=without_tags,
        untagged="have no tags",
        meta=meta,
        class_split=class_split,
        split_seed=split_seed,
        skip_bad=skip_bad,
    )
