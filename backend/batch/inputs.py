"""Batch inputs: expand ``@list.txt`` files and give every clip its own package folder under the output root.

Torch-free. A clip is what ``track`` takes: a video file, one image, or a folder of images (one image sequence).
Folder names are stable across re-runs, whatever the order of the inputs, so a re-run finds each clip's package
again: a clip whose package already exists under a candidate name keeps that folder; the others take the first free
candidate ``NAME``, ``NAME-2``, ``NAME-3`` … where ``NAME`` is the file's stem or the folder's name.
"""
from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..contracts.protocol import BadInputError
from ..contracts.result_format import MANIFEST, PackageError, read_manifest

LIST_PREFIX = "@"


@dataclass(frozen=True)
class BatchClip:
    """One clip of a batch."""

    name: str     # folder name under the output root (also the ``clip`` field of its protocol events)
    source: Path  # the input, resolved (a video file, an image, or an image folder)
    out: Path     # its result package: out_root / name


def expand_inputs(items: Iterable[str]) -> list[Path]:
    """Inputs in order, ``@list.txt`` replaced by its lines (blank lines and ``#`` comments skipped; relative paths
    are relative to the list file); resolved, duplicates dropped. A missing input or list is a BadInputError."""
    out: list[Path] = []
    for item in items:
        if item.startswith(LIST_PREFIX):
            listing = Path(item[len(LIST_PREFIX):])
            try:
                lines = listing.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise BadInputError(f"cannot read the input list {listing}: {exc.strerror or exc}",
                                    "Give @FILE with one video, image or image folder per line.") from None
            entries = (line.strip() for line in lines)
            paths = [listing.parent / e for e in entries if e and not e.startswith("#")]
        else:
            paths = [Path(item)]
        for path in paths:
            if not path.exists():
                raise BadInputError(f"input not found: {path}", "Check the path (lists: one input per line).")
            out.append(path.resolve())
    if not out:
        raise BadInputError("no inputs", "Give videos, images, image folders or @list.txt files.")
    return list(dict.fromkeys(out))


def _base_name(source: Path) -> str:
    stem = source.name if source.is_dir() else source.stem
    return re.sub(r"[^\w.-]+", "_", stem).strip("._") or "clip"


def _package_source(folder: Path) -> str | None:
    """The clip path recorded in ``folder``'s package, or None when it holds none (or an unreadable one)."""
    if not (folder / MANIFEST).is_file():
        return None
    try:
        return str(read_manifest(folder)["source"].get("path"))
    except (PackageError, AttributeError):
        return None


def _candidates(source: Path) -> Iterator[str]:
    base = _base_name(source)
    yield base
    yield from (f"{base}-{k}" for k in itertools.count(2))


def assign_folders(sources: Sequence[Path], out_root: Path) -> list[BatchClip]:
    """A distinct package folder under ``out_root`` for each source (see the module docstring), in input order."""
    named: dict[Path, str] = {}
    for src in sources:  # packages written by an earlier run keep their folder (a name's k-th folder, k <= count)
        hit = next((n for n in itertools.islice(_candidates(src), len(sources) + 1)
                    if _package_source(out_root / n) == str(src)), None)
        if hit is not None:
            named[src] = hit
    taken = set(named.values())
    for src in sources:
        if src not in named:
            name = next(n for n in _candidates(src) if n not in taken and not _occupied(out_root / n))
            taken.add(name)
            named[src] = name
    return [BatchClip(named[src], src, out_root / named[src]) for src in sources]


def _occupied(folder: Path) -> bool:
    """A folder that holds anything (another clip's package, foreign files) is never written into."""
    return folder.exists() and (not folder.is_dir() or any(os.scandir(folder)))
