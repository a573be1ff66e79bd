"""A local package index for installer tests and the set-up benchmark (standard library only).

``build_index`` lays out a folder of wheels as PyPI serves it (PEP 503 project pages with PEP 658 ``.metadata``
files, so pip's resolver reads dependencies without fetching whole wheels); ``serve`` runs it over HTTP on
127.0.0.1, optionally throttling some files so a test can cancel a download in flight. ``make_wheel`` writes a
small pure-Python wheel.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import http.server
import os
import re
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def make_wheel(folder: Path, name: str, version: str, *, requires: tuple[str, ...] = (), payload: int = 0) -> Path:
    """``NAME-VERSION-py3-none-any.whl`` with a package ``NAME`` (``VERSION`` constant) and ``payload`` random
    (incompressible) bytes."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
             f"{dist}/METADATA": (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                  + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    if payload:
        files[f"{name}/payload.bin"] = os.urandom(payload)
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items()) + f"{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record.encode()
    out = Path(folder) / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files.items():
            z.writestr(path, data)
    return out


def build_index(wheels: Path, out: Path) -> None:
    """``out/simple/<project>/index.html`` + ``out/files/<wheel>`` (+ ``.metadata``) for every wheel in WHEELS."""
    files = out / "files"
    files.mkdir(parents=True)
    projects: dict[str, list[str]] = {}
    for wheel in sorted(Path(wheels).glob("*.whl")):
        (files / wheel.name).symlink_to(wheel.resolve())
        with zipfile.ZipFile(wheel) as z:
            meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
            metadata = z.read(meta_name)
        (files / (wheel.name + ".metadata")).write_bytes(metadata)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        meta_digest = hashlib.sha256(metadata).hexdigest()
        href = f"../../files/{html.escape(wheel.name)}#sha256={digest}"
        projects.setdefault(_normalise(wheel.name.split("-")[0]), []).append(
            f'<a href="{href}" data-dist-info-metadata="sha256={meta_digest}" '
            f'data-core-metadata="sha256={meta_digest}">{html.escape(wheel.name)}</a><br>')
    for project, links in projects.items():
        page = out / "simple" / project / "index.html"
        page.parent.mkdir(parents=True)
        page.write_text("<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n")


class _Handler(http.server.SimpleHTTPRequestHandler):
    slow: tuple[str, ...] = ()       # file-name prefixes served at about ``bytes_per_s``
    bytes_per_s: float = 300_000.0

    def copyfile(self, source, outputfile) -> None:
        if not any(os.path.basename(self.path).startswith(p) for p in self.slow):
            return super().copyfile(source, outputfile)
        chunk = 16384
        while data := source.read(chunk):
            outputfile.write(data)
            time.sleep(chunk / self.bytes_per_s)

    def log_message(self, *args) -> None:
        pass


@dataclass
class LocalIndex:
    url: str                         # the ``--index-url`` (``…/simple``)
    server: http.server.ThreadingHTTPServer

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(root: Path, *, slow: tuple[str, ...] = (), bytes_per_s: float = 300_000.0) -> LocalIndex:
    """Serve a ``build_index`` folder on 127.0.0.1 (a free port) from a daemon thread."""
    handler = type("Handler", (_Handler,), {"slow": tuple(slow), "bytes_per_s": bytes_per_s})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="local-package-index", daemon=True).start()
    return LocalIndex(f"http://127.0.0.1:{server.server_port}/simple", server)
