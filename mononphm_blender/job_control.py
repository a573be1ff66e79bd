"""Blender side of tracking jobs: start, tick (main thread), cancel, re-attach after reopening a .blend.

``tick()`` holds all job logic and is what the timer calls (every 0.2 s) — tests call it directly because
timers never fire in background mode. Job identity (pid, log, events file, output folder) is persisted in
``scene.mononphm.job`` so a reopened .blend finds a run that is still going, or has finished, again.
"""

from __future__ import annotations

import contextlib
import os
import time

import bpy
from bpy.app.handlers import persistent

from . import contracts, importer, prefs
from .contracts import result_format, track_config
from .core import command, jobs

TICK_S = 0.2
LIVE_IMPORT_MIN_S = 2.0

_jobs: dict[str, object] = {}  # scene name → BackendJob | AttachedJob
batch_jobs: dict[str, object] = {}  # scene name → the scene's running batch (``batch_queue``; a run refuses to start)
_last_import: dict[str, tuple[float, float, int]] = {}  # scene → (time, duration, frames imported)
_messages: list[tuple[str, str]] = []  # (level, text) for the UI / tests


def running_job(scene):
    return _jobs.get(scene.name)


def is_running(scene) -> bool:
    job = _jobs.get(scene.name)
    return job is not None and not job.status.finished


def messages() -> list[tuple[str, str]]:
    return list(_messages)


def _say(level: str, text: str) -> None:
    _messages.append((level, text))
    del _messages[:-50]
    print(f"MonoNPHM {level}: {text}")


# --- starting ---------------------------------------------------------------------------------------------------

def movie_clip_input(clip) -> str:
    """The backend input of a Movie Clip: its video file, or the folder of its image sequence."""
    path = bpy.path.abspath(clip.filepath)
    return os.path.dirname(path) if clip.source == "SEQUENCE" else path


def tracking_settings(context, scene) -> dict:
    """Preset, output, texture, device and model of the scene's settings as TrackConfig fields; raises ValueError."""
    s = scene.mononphm
    settings = {"preset": s.preset, "output": s.output_mode, "texture": s.track_texture,
                "device": prefs.get_prefs(context).device}
    if s.model == "OFFICIAL":
        settings.update(official_checkpoint=bpy.path.abspath(s.official_dir),
                        mean_anchors=bpy.path.abspath(s.mean_anchors), checkpoint_epoch=s.checkpoint_epoch or None)
        if not settings["official_checkpoint"] or not os.path.isdir(settings["official_checkpoint"]):
            raise ValueError("Choose the official checkpoint folder")
        if not settings["mean_anchors"] or not os.path.isfile(settings["mean_anchors"]):
            raise ValueError("Choose the mean anchors file (anchors_65.npy) of the official checkpoint")
    return settings


def build_request(context, scene, *, scene_range: tuple[int, int] | None = None,
                  overwrite: bool = False) -> track_config.TrackConfig:
    """The run's settings from the scene settings (``scene_range``: scene frames to track, inclusive, instead of the
    settings' range); raises ValueError with a user-facing message."""
    s = scene.mononphm
    if s.input_kind == "CLIP":
        clip = s.clip
        if clip is None:
            raise ValueError("Choose a Movie Clip (or switch the input to a file)")
        input_path = movie_clip_input(clip)
    else:
        clip, input_path = None, bpy.path.abspath(s.input_path)
    if not input_path or not os.path.exists(input_path):
        raise ValueError(f"Input not found: {input_path or '(empty)'}")
    out_dir = bpy.path.abspath(s.output_dir)
    if not out_dir or out_dir.startswith("//"):
        raise ValueError("Save the .blend first, or choose an absolute output folder")
    if scene_range is None and s.use_frame_range:
        scene_range = (s.frame_start, s.frame_end)
    owner = result_format.lock_owner(out_dir)
    if owner is not None:
        raise ValueError(f"{out_dir} is being written by another tracking run (process {owner['pid']}); wait for "
                         "it to finish or cancel it, or choose another output folder")
    face = f"{s.face_point[0]},{s.face_point[1]}" if s.face == "POINT" else s.face
    return track_config.TrackConfig(input=input_path, out=out_dir, overwrite=overwrite, face=face,
                                    **clip_fields(clip, importer.track_clip_start(s), scene_range, s.stride),
                                    **tracking_settings(context, scene))


def clip_fields(clip, clip_start: int | None, scene_range: tuple[int, int] | None, stride: int) -> dict:
    """TrackConfig fields of one clip: ``frames`` (``scene_range``: scene frames to track, inclusive, None for all;
    ``clip_start``: the scene frame of its source frame 0) and, for a Movie Clip, its camera's intrinsics."""
    from .blender import scene as scenes

    fields = {"frames": command.frames_arg(None, None, stride)}
    if scene_range is not None:
        fields["frames"] = command.frames_arg(scene_range[0] - clip_start, scene_range[1] - clip_start, stride)
    if clip is not None:
        intr = scenes.clip_intrinsics(clip)
        fields.update(fx=intr.fx, fy=intr.fy, cx=intr.cx, cy=intr.cy)
    return fields


def start_track(context, scene=None, *, scene_range: tuple[int, int] | None = None, overwrite: bool = False,
                python: str | None = None) -> jobs.BackendJob:
    """Start ``python -m backend track`` for the scene's settings; raises ValueError / RuntimeError."""
    scene = scene or context.scene
    refuse_when_busy(scene)
    python = require_backend_python(context, python)
    req = build_request(context, scene, scene_range=scene_range, overwrite=overwrite)
    return _start_job(context, scene, "track", command.track_argv(python, req), req.out)


def start_bake(context, scene=None, *, frames: str | None = None, texture: bool = False,
               python: str | None = None) -> jobs.BackendJob:
    """Start ``python -m backend bake`` on the scene's last imported result; raises ValueError / RuntimeError."""
    scene = scene or context.scene
    refuse_when_busy(scene)
    python = require_backend_python(context, python)
    package = bpy.path.abspath(scene.mononphm.last_package)
    if not scene.mononphm.last_package or not os.path.isdir(package):
        raise ValueError("Import or track a result first: the bake works on the last result")
    return _start_job(context, scene, "bake", command.bake_argv(python, package, frames, texture), package)


def refuse_when_busy(scene) -> None:
    """RuntimeError when the scene has a running job: a track or bake run, or a batch (one backend job at a time:
    each imports into the scene)."""
    if is_running(scene):
        raise RuntimeError("A backend job is already running for this scene")
    if scene.name in batch_jobs:
        raise RuntimeError("A batch is running for this scene: wait for it or cancel it in the Batch panel")


def require_backend_python(context, python: str | None = None) -> str:
    """``python``, else the preferences' backend interpreter; RuntimeError with what to do when there is none."""
    python = python or prefs.backend_python(context)
    if not python:
        raise RuntimeError("No backend interpreter: open the add-on preferences and set up the backend")
    return python


def log_file(context, kind: str, suffix: str = ".log"):
    """A new file of this Blender's run of ``kind`` (track, bake, batch) in the log folder."""
    return prefs.log_dir(context) / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}{suffix}"


def launch(context, kind: str, argv: list, out_dir: str):
    """Start one backend process of ``kind`` (track, bake, batch) with its log file; returns ``(job, log_path)``."""
    root = contracts.backend_root()
    log = log_file(context, kind)
    job = jobs.BackendJob(argv, log_path=log, cwd=str(root), env=command.backend_env(root),
                          out_dir=out_dir).start()
    return job, log


def _start_job(context, scene, kind: str, argv: list, out_dir: str) -> jobs.BackendJob:
    job, log = launch(context, kind, argv, out_dir)
    st = scene.mononphm.job
    st.kind, st.pid, st.log_path, st.out_path = kind, job.pid, str(log), importer.stored_path(out_dir)
    st.state, st.stage, st.progress, st.done, st.total, st.frames_done = "RUNNING", "starting", 0.0, 0, 0, 0
    st.eta_s, st.message, st.error, st.hint, st.imported_frames = -1.0, "", "", "", 0
    st.warning, st.warnings_seen, st.device = "", 0, ""
    _jobs[scene.name] = job
    _last_import.pop(scene.name, None)
    if job.status.finished:  # could not start
        _finish(context, scene, job)
    ensure_timer()
    return job


def cancel_job(job) -> bool:
    """Ask a running job (track, bake, batch) to stop; False when there is none or it has finished."""
    if job is None or job.status.finished:
        return False
    job.cancel()
    return True


def cancel(scene) -> bool:
    if not cancel_job(_jobs.get(scene.name)):
        return False
    scene.mononphm.job.stage = "cancelling"
    return True


# --- ticking ----------------------------------------------------------------------------------------------------

def tick(context=None) -> float | None:
    """Process every job once (main thread). Returns the next timer interval, or None when idle."""
    context = context or bpy.context
    busy = prefs.poll_backend_state()
    for scene_name, job in list(_jobs.items()):
        scene = bpy.data.scenes.get(scene_name)
        if scene is None:
            _jobs.pop(scene_name, None)
            continue
        job.poll()
        _sync(scene, job)
        if job.status.finished:
            _finish(context, scene, job)
            _jobs.pop(scene_name, None)
        else:
            busy = True
            _maybe_live_import(context, scene, job)
    _status_bar(context)
    _redraw(context)
    return TICK_S if busy else None


def _sync(scene, job) -> None:
    st, js = scene.mononphm.job, job.status
    st.stage = js.stage or st.stage
    st.done, st.total = js.done, js.total
    st.progress = js.fraction
    st.frames_done = js.frames_done
    st.device = js.device
    st.eta_s = -1.0 if js.eta_s is None else float(js.eta_s)
    st.message = js.message
    st.state = js.state
    for text in js.warnings[st.warnings_seen:]:  # backend warnings reach the Info log once, the panel keeps the last
        _say("WARNING", f"Backend: {text}")
        st.warning = text
    st.warnings_seen = len(js.warnings)


def _package_frames(out_dir: str) -> int:
    try:
        return len(result_format.read_manifest(bpy.path.abspath(out_dir))["frames"])
    except result_format.PackageError:
        return 0


def import_into(context, scene, package: str, clip=None, clip_start: int | None = None) -> str:
    """Import a package into ``scene`` (``importer.import_package``); '' or what went wrong (the scene is then left
    unchanged and the job goes on)."""
    with context.temp_override(scene=scene) if hasattr(context, "temp_override") else contextlib.nullcontext():
        try:
            importer.import_package(context, bpy.path.abspath(package), clip=clip, clip_start=clip_start)
        except result_format.PackageError as exc:
            return f"Import: {exc.message} {exc.hint}"
        except Exception as exc:  # noqa: BLE001 - see above
            return f"Import: {type(exc).__name__}: {exc}"
    return ""


def _do_import(context, scene, out_path: str) -> bool:
    s = scene.mononphm
    problem = import_into(context, scene, out_path, s.clip if s.input_kind == "CLIP" else None,
                          importer.track_clip_start(s))
    if problem:
        _say("WARNING", problem)
    return not problem


def _maybe_live_import(context, scene, job) -> None:
    """Frames appear as they finish: re-import when new frames exist, throttled by the last import's cost."""
    s = scene.mononphm
    if not s.auto_import:
        return
    now = time.monotonic()
    last_t, last_cost, last_n = _last_import.get(scene.name, (0.0, 0.0, 0))
    if now - last_t < max(LIVE_IMPORT_MIN_S, 5.0 * last_cost):
        return
    try:
        manifest = result_format.read_manifest(bpy.path.abspath(s.job.out_path))
    except result_format.PackageError:
        return  # nothing written yet
    n = len(manifest["frames"])
    ready = manifest.get("has_canonical_mesh") or manifest.get("usd")
    if n <= last_n or not ready:
        return
    t0 = time.monotonic()
    if _do_import(context, scene, s.job.out_path):
        s.job.imported_frames = n
    _last_import[scene.name] = (time.monotonic(), time.monotonic() - t0, n)


def _finish(context, scene, job) -> None:
    st, js = scene.mononphm.job, job.status
    what = "Baking" if st.kind == "bake" else "Tracking"
    st.state = js.state
    st.error, st.hint = js.error, js.hint
    if st.out_path and _package_frames(st.out_path):
        scene.mononphm.last_package = st.out_path  # "Import Result" offers it
    if js.state == jobs.FINISHED:
        st.progress = 1.0
        n = _package_frames(st.out_path)
        _say("INFO", f"{what} finished: {n} frames in {bpy.path.abspath(st.out_path)}")
        # a bake's only point is the new colours: always shown
        if (scene.mononphm.auto_import or st.kind == "bake") and n and _do_import(context, scene, st.out_path):
            st.imported_frames = n
    elif js.state == jobs.CANCELLED:
        n = _package_frames(st.out_path)
        _say("INFO", f"{what} cancelled; {n} finished frames are kept in {bpy.path.abspath(st.out_path)}")
        if scene.mononphm.auto_import and n:
            _do_import(context, scene, st.out_path)
    else:
        _say("ERROR", f"{what} failed: {js.error} {js.hint} — log: {st.log_path}")
    st.pid = 0


def _status_bar(context) -> None:
    wm = getattr(context, "window_manager", None)
    if wm is None:
        return
    active = [(bpy.data.scenes.get(n), j) for n, j in _jobs.items() if not j.status.finished]
    text = None
    if active:
        scene, job = active[0]
        js = job.status
        eta = f", ETA {format_eta(js.eta_s)}" if js.eta_s is not None else ""
        text = f"MonoNPHM: {js.stage or 'tracking'} {js.done}/{js.total or '?'}{eta}"
    for window in wm.windows:
        try:
            window.workspace.status_text_set(text)
        except (AttributeError, RuntimeError):
            pass


def _redraw(context) -> None:
    wm = getattr(context, "window_manager", None)
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES", "DOPESHEET_EDITOR", "GRAPH_EDITOR"):
                area.tag_redraw()


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


# --- timer and re-attaching -------------------------------------------------------------------------------------

def _timer():
    try:
        return tick()
    except Exception as exc:  # never let the timer die silently with a job running
        _say("ERROR", f"job tick failed: {exc}")
        return 1.0


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=TICK_S, persistent=True)


def reattach_all() -> list[str]:
    """After loading a .blend: pick up runs that are still going (pid alive) or finished while it was closed."""
    found = []
    for scene in bpy.data.scenes:
        settings = getattr(scene, "mononphm", None)
        if settings is None:
            continue
        st = settings.job
        if st.state != "RUNNING" or scene.name in _jobs:
            continue
        if not st.out_path:
            st.state = "FAILED"
            continue
        out = bpy.path.abspath(st.out_path)
        # The package's lock says who writes it: a run holding it is followed whatever pid was recorded (another
        # Blender may have started it); before a run takes the lock (its landmark pass) the recorded pid counts.
        owner = result_format.lock_owner(out)
        if owner is not None and isinstance(owner.get("pid"), int) and jobs.pid_alive(owner["pid"]):
            st.pid = pid = owner["pid"]
        else:
            pid = st.pid
        _jobs[scene.name] = jobs.AttachedJob.follow(pid, log_path=bpy.path.abspath(st.log_path), out_dir=out,
                                                    total=st.total)
        found.append(scene.name)
    if found:
        ensure_timer()
    return found


@persistent
def _on_load_post(*_args) -> None:
    _jobs.clear()
    _last_import.clear()
    reattach_all()


def _after_register():
    """First timer after enabling: check the backend and pick up runs of the open file (UI sessions only)."""
    prefs.start_handshake()
    reattach_all()
    ensure_timer()
    return None


def register() -> None:
    if _on_load_post not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(_on_load_post)
    if not bpy.app.background and not bpy.app.timers.is_registered(_after_register):
        bpy.app.timers.register(_after_register, first_interval=1.0)


def unregister() -> None:
    if _on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load_post)
    for fn in (_timer, _after_register):
        if bpy.app.timers.is_registered(fn):
            bpy.app.timers.unregister(fn)
    # Running backends keep going (own process group); reopening the .blend re-attaches to them.
    _jobs.clear()
    _last_import.clear()
