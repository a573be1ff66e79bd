"""Batch inputs: expand ``@list.txt`` files and give every clip its own package folder under the output root.

Torch-free. A clip is what ``track`` takes: a video file, one image, or a folder of images (one image sequence). A
list line may carry the clip's own ``track`` flags after a tab (``take.mp4<TAB>--frames 0:500 --preset standard``):
they apply to that clip on top of the command's (the add-on passes each queued clip's frame range and camera so).
Folder names are stable across re-runs, whatever the order of the inputs, so a re-run finds each clip's package
again: a clip whose package already exists under a candidate name keeps that folder; the others take the first free
candidate ``NAME``, ``NAME-2``, ``NAME-3`` … where ``NAME`` is the file's stem or the folder's name.
"""
from __future__ import annotations

import itertools
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..contracts.protocol import BadInputError
from ..contracts.result_format import MANIFEST, PackageError, read_manifest

LIST_PREFIX = "@"
FLAGS_SEPARATOR = "\t"   # in a list line: the input, then the clip's own track flags


@dataclass(frozen=True)
class ClipInput:
    """One input of a batch."""

    source: Path                 # the input, resolved (a video file, an image, or an image folder)
    flags: tuple[str, ...] = ()  # its own track flags (its list line's), applied on top of the command's


@dataclass(frozen=True)
class BatchClip:
    """One clip of a batch."""

    name: str                    # folder name under the output root (also the ``clip`` field of its events)
    source: Path                 # the input, resolved
    out: Path                    # its result package: out_root / name
    flags: tuple[str, ...] = ()  # its own track flags (``ClipInput.flags``)


def expand_inputs(items: Iterable[str]) -> list[ClipInput]:
    """Inputs in order, ``@list.txt`` replaced by its lines (blank lines and ``#`` comments skipped; relative paths
    are relative to the list file; flags after a tab); resolved, a repeated input dropped (its first line counts).
    A missing input or list is a BadInputError."""
    out: dict[Path, ClipInput] = {}
    for item in items:
        if item.startswith(LIST_PREFIX):
            listing = Path(item[len(LIST_PREFIX):])
            try:
                lines = listing.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise BadInputError(f"cannot read the input list {listing}: {exc.strerror or exc}",
                                    "Give @FILE with one video, image or image folder per line.") from None
            entries = [line.partition(FLAGS_SEPARATOR) for line in lines if line.strip()
                       and not line.lstrip().startswith("#")]
            pairs = [(listing.parent / path.strip(), _split_flags(flags, listing)) for path, _, flags in entries]
        else:
            pairs = [(Path(item), ())]
        for path, flags in pairs:
            if not path.exists():
                raise BadInputError(f"input not found: {path}", "Check the path (lists: one input per line).")
            out.setdefault(path.resolve(), ClipInput(path.resolve(), flags))
    if not out:
        raise BadInputError("no inputs", "Give videos, images, image folders or @list.txt files.")
    return list(out.values())


def _split_flags(text: str, listing: Path) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:   # an unclosed quote
        raise BadInputError(f"the input list {listing} has unreadable flags ({exc}): {text.strip()}",
                            "Quote flag values as a shell would (--frames 0:100 --face \"120,80\").") from None


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


def assign_folders(inputs: Sequence[ClipInput], out_root: Path) -> list[BatchClip]:
    """A distinct package folder under ``out_root`` for each input (see the module docstring), in input order."""
    sources = [i.source for i in inputs]
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
    return [BatchClip(named[i.source], i.source, out_root / named[i.source], i.flags) for i in inputs]


def _occupied(folder: Path) -> bool:
    """A folder that holds anything (another clip's package, foreign files) is never written into."""
    return folder.exists() and (not folder.is_dir() or any(os.scandir(folder)))
