"""Add-on preferences: backend interpreter (auto-detected), set up / remove the backend environment, device."""


import functools
import os
import threading
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from . import contracts
from .core import command, installer, jobs

ADDON_ID = __package__  # "mononphm_blender" in development, "bl_ext.<repo>.mononphm_blender" when installed

_DEVICE_TEXT = {"auto": ("Auto", "CUDA, then Apple MPS, then CPU"), "cpu": ("CPU", ""), "cuda": ("CUDA", "NVIDIA GPU"),
                "mps": ("MPS", "Apple Silicon GPU")}
DEVICE_ITEMS = [(name, *_DEVICE_TEXT[name]) for name in contracts.track_config.DEVICES]
SOURCE_ITEMS = [("ONLINE", "Online", "Download the pinned packages from the Python package index"),
                ("OFFLINE", "Offline", "Install from a folder of wheels (downloaded on another machine)")]
TORCH_ITEMS = [("AUTO", "Automatic", "CUDA when an NVIDIA driver is installed, the standard build on macOS, "
                                      "otherwise the CPU build"),
               ("CPU", "CPU", "The CPU build of torch (no NVIDIA GPU; the smallest download)"),
               ("CUDA", "CUDA", "The CUDA build of torch for NVIDIA GPUs (a download of several GB)"),
               ("DEFAULT", "Standard", "The package index's own torch build (macOS: Apple silicon GPUs via MPS)")]


class _Defaults:
    """Preference values when the add-on is registered without the preferences (scripts, tests)."""

    python = ""
    env_dir = ""
    base_python = ""
    install_source = "ONLINE"
    wheels_dir = ""
    torch_build = "AUTO"
    install_ray = False
    device = contracts.track_config.TrackConfig.device
    log_dir = ""


def get_prefs(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None and addon.preferences is not None else _Defaults()


def user_dir(*parts: str) -> Path:
    """Writable per-user folder of the add-on (the extension folder itself may be read-only)."""
    base = None
    if ADDON_ID.startswith("bl_ext."):
        try:
            base = Path(bpy.utils.extension_path_user(ADDON_ID, path="", create=True))
        except (ValueError, RuntimeError, TypeError):
            base = None
    if base is None:
        base = Path(bpy.utils.user_resource("DATAFILES", path="mononphm_blender", create=True))
    out = base.joinpath(*parts)
    out.mkdir(parents=True, exist_ok=True)
    return out


def default_env_dir(p=None) -> Path:
    p = p or get_prefs()
    return Path(bpy.path.abspath(p.env_dir)) if p.env_dir else user_dir() / "backend-env"


def backend_python(context=None) -> str:
    """The backend interpreter: preference > $MONONPHM_BACKEND_PYTHON > set-up env > the project's .venv."""
    p = get_prefs(context)
    if p.python:
        return os.path.expanduser(bpy.path.abspath(p.python))
    env = os.environ.get("MONONPHM_BACKEND_PYTHON")
    if env:
        return env
    managed = command.venv_python(default_env_dir(p))
    if managed.is_file():
        return str(managed)
    project = command.find_project_python(contracts.repo_root())
    return str(project) if project else ""


def log_dir(context=None) -> Path:
    p = get_prefs(context)
    return Path(bpy.path.abspath(p.log_dir)) if p.log_dir else user_dir("logs")


# --- backend status (handshake, set-up and removal started by ops.py); polled by job_control.tick() ----------

class BackendState:
    info: dict | None = None
    error: str = ""
    checking = None  # jobs.Handshake
    setup: installer.Installer | None = None  # the running (or last) set-up
    setup_message: str = ""
    removing: threading.Thread | None = None
    base_choice: tuple[str, object] | None = None  # (custom path, BaseChoice | InstallError), probed once


STATE = BackendState()


def base_python_choice(p=None):
    """The base interpreter for *Set Up Backend* (a BaseChoice), or the InstallError saying why there is none.
    Probed once per custom path: preferences redraw often."""
    p = p or get_prefs()
    custom = os.path.expanduser(bpy.path.abspath(p.base_python)) if p.base_python else ""
    if STATE.base_choice is None or STATE.base_choice[0] != custom:
        try:
            STATE.base_choice = (custom, installer.resolve_base_python(custom))
        except installer.InstallError as exc:
            STATE.base_choice = (custom, exc)
    return STATE.base_choice[1]


_driver_evidence = functools.cache(installer.nvidia_driver_evidence)  # a driver appears only with a restart


def torch_choice(p=None) -> installer.TorchChoice:
    p = p or get_prefs()
    return installer.choose_torch_variant(p.torch_build.lower(), evidence=_driver_evidence)


def environment_note(p=None) -> str:
    """Why the environment Set Up Backend made needs it again ('' when it does not, or there is none)."""
    p = p or get_prefs()
    env = default_env_dir(p)
    if not command.is_managed_env(env):
        return ""
    stamp = installer.read_stamp(env)
    if stamp is None:
        return "The backend set-up did not finish: Retry resumes it"
    if stamp.get("requirements") != installer.requirements_digest(contracts.requirements_file(p.install_ray)):
        return "The packages to install changed (an add-on update, or Batches on Ray): Set Up Backend updates it"
    return ""


def setup_running() -> bool:
    return STATE.setup is not None and not STATE.setup.status.finished


def start_handshake(context=None) -> None:
    from .core.jobs import Handshake

    python = backend_python(context)
    STATE.info, STATE.error = None, ""
    if not python:
        STATE.error = "No backend interpreter: set one, or run 'Set up backend'"
        return
    root = contracts.backend_root()
    STATE.checking = Handshake(command.version_argv(python), cwd=str(root), env=command.backend_env(root))


def poll_backend_state() -> bool:
    """Main thread: collect handshake / set-up results. True while something is still running."""
    busy = False
    if STATE.checking is not None:
        if STATE.checking.poll():
            STATE.info, STATE.error = STATE.checking.result, STATE.checking.error
            STATE.checking = None
        else:
            busy = True
    if STATE.setup is not None and not STATE.setup.status.finished:
        st = STATE.setup.poll()
        if st.state == jobs.FINISHED:
            STATE.setup_message = st.message
            start_handshake()
            busy = True
        elif st.finished:
            STATE.setup_message = f"{st.error}. {st.hint}".strip()
        else:
            busy = True
    if STATE.removing is not None:
        if STATE.removing.is_alive():
            busy = True
        else:
            STATE.removing = None
    return busy


def status_text() -> str:
    if STATE.checking is not None:
        return "Checking backend…"
    if STATE.info:
        info = STATE.info
        devices = ", ".join(info.get("devices") or []) or "none"
        auto = f" (auto: {info['auto_device']})" if info.get("auto_device") else ""
        return f"Backend {info.get('backend')} · torch {info.get('torch') or 'missing'} · devices: {devices}{auto}"
    if STATE.error:
        return STATE.error
    return "Backend not checked yet"


def draw_backend_status(layout, context) -> None:
    """Backend state, and the set-up's progress / result with Cancel and Retry (preferences and sidebar)."""
    python = backend_python(context)
    col = layout.column(align=True)
    col.label(text=status_text(), icon="CHECKMARK" if STATE.info else ("ERROR" if STATE.error else "QUESTION"))
    col.label(text=f"Interpreter: {python or 'not found'}")
    job = STATE.setup
    if job is not None and not job.status.finished:
        st = job.status
        text = f"{st.label} ({st.step_index + 1}/{st.step_count})"
        if hasattr(col, "progress"):
            col.progress(factor=st.fraction, type="BAR", text=text)
        else:
            col.label(text=f"{text} {st.fraction:.0%}")
        col.label(text=st.message)
        col.operator("mononphm.cancel_setup", icon="CANCEL")
        return
    if job is not None and job.status.finished:
        st = job.status
        col.label(text=STATE.setup_message, icon="CHECKMARK" if st.state == jobs.FINISHED else "ERROR")
        if st.state != jobs.FINISHED:
            col.label(text=f"Log: {job.log_path}")
            col.operator("mononphm.setup_backend", text="Retry (resumes)", icon="FILE_REFRESH")
    elif note := environment_note():
        col.label(text=note, icon="ERROR")
        col.operator("mononphm.setup_backend", text="Retry (resumes)", icon="FILE_REFRESH")
    elif not python:
        col.operator("mononphm.setup_backend", icon="IMPORT")


class MONONPHM_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    python: StringProperty(name="Backend Python", subtype="FILE_PATH",
                           description="Interpreter of the backend environment (empty: found automatically — "
                                       "the environment made by 'Set up backend', or the project's .venv)")
    env_dir: StringProperty(name="Environment Folder", subtype="DIR_PATH",
                            description="Where 'Set up backend' creates the environment (short paths help on "
                                        "Windows); empty: the add-on's user folder")
    base_python: StringProperty(name="Custom Base Python", subtype="FILE_PATH",
                                description="Advanced: the Python the environment is created from (empty: "
                                            "Blender's own Python)")
    install_source: EnumProperty(name="Install From", items=SOURCE_ITEMS, default="ONLINE")
    wheels_dir: StringProperty(name="Wheels Folder", subtype="DIR_PATH")
    torch_build: EnumProperty(name="torch", items=TORCH_ITEMS, default="AUTO")
    install_ray: BoolProperty(name="Batches on Ray", default=False,
                              description="Also install Ray (about 240 MB) for the Batch panel: many clips at once, "
                                          "long clips in chunks, on this machine or a Ray cluster")
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default=contracts.track_config.TrackConfig.device)
    log_dir: StringProperty(name="Log Folder", subtype="DIR_PATH", description="Empty: the add-on's user folder")

    def draw(self, context):
        layout = self.layout
        box = layout.box()
        box.label(text="Backend", icon="CONSOLE")
        draw_backend_status(box, context)
        row = box.row()
        row.operator("mononphm.check_backend", icon="FILE_REFRESH")
        box.prop(self, "python")
        box.prop(self, "device")
        box = layout.box()
        box.label(text="Set up the backend environment (torch runs there, never in Blender's Python)")
        box.prop(self, "install_source", expand=True)
        if self.install_source == "OFFLINE":
            box.prop(self, "wheels_dir")
        else:
            box.label(text="The online install downloads packages (network use by the installer only)")
        row = box.row()
        row.prop(self, "torch_build")
        try:
            choice = torch_choice(self)
            row.label(text=f"{choice.variant.upper()}: {choice.reason}")
        except installer.InstallError as exc:
            row.label(text=exc.message, icon="ERROR")
        box.prop(self, "install_ray")
        row = box.row()
        row.operator("mononphm.setup_backend", icon="IMPORT")
        row.operator("mononphm.remove_backend", icon="TRASH")
        adv = box.column()
        adv.label(text="Advanced")
        adv.prop(self, "base_python")
        base = base_python_choice(self)
        if isinstance(base, installer.InstallError):
            adv.label(text=base.message, icon="ERROR")
            adv.label(text=base.hint)
        else:
            where = {"custom": "custom", "blender": "Blender's own Python", "path": "found on PATH"}[base.source]
            adv.label(text=f"Base Python {base.version} ({where}): {base.python}")
            adv.label(text=installer.mediapipe_plan(base.python_version))
        adv.prop(self, "env_dir")
        layout.prop(self, "log_dir")


classes = (MONONPHM_AP_preferences,)
