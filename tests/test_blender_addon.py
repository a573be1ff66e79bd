"""Registration, panels and preferences of the add-on (headless bpy)."""

import sys
from types import SimpleNamespace

import pytest

bpy = pytest.importorskip("bpy")


class FakeLayout:
    """Records what a draw() call asks for and checks every property/operator/list it names exists."""

    def __init__(self, log=None):
        self.log = log if log is not None else []
        self.active = True
        self.enabled = True

    def _child(self, *a, **k):
        return FakeLayout(self.log)

    row = column = box = split = column_flow = grid_flow = _child

    def prop(self, data, name, **kw):
        assert name in data.bl_rna.properties, f"{type(data).__name__} has no property {name!r}"
        self.log.append(("prop", name))

    def operator(self, idname, **kw):
        module, name = idname.split(".")
        op = getattr(getattr(bpy.ops, module), name)
        op.get_rna_type()  # raises if not registered
        self.log.append(("operator", idname))
        return SimpleNamespace()

    def label(self, text="", **kw):
        assert isinstance(text, str)
        self.log.append(("label", text))

    def progress(self, factor=0.0, type="BAR", text=""):
        assert 0.0 <= factor <= 1.0
        self.log.append(("progress", text))

    def template_ID(self, data, name, **kw):
        assert name in data.bl_rna.properties
        self.log.append(("template_ID", name))

    def template_list(self, listtype, list_id, data, prop, active_data, active_prop, **kw):
        assert getattr(bpy.types, listtype, None) is not None, listtype
        assert prop in data.bl_rna.properties and active_prop in active_data.bl_rna.properties
        self.log.append(("template_list", listtype))

    def separator(self, **kw):
        pass


def _draw(panel_cls, context):
    layout = FakeLayout()
    panel_cls.draw(SimpleNamespace(layout=layout), context)
    return layout.log


def test_register_unregister_twice(addon):
    import mononphm_blender

    mononphm_blender.unregister()
    assert not hasattr(bpy.types.Scene, "mononphm")
    assert getattr(bpy.types, "MONONPHM_PT_main", None) is None
    for _ in range(2):
        mononphm_blender.register()
        assert hasattr(bpy.types.Scene, "mononphm")
        assert bpy.types.MONONPHM_PT_main.bl_category == "MonoNPHM"
        assert bpy.ops.mononphm.track.get_rna_type()
        mononphm_blender.unregister()
        assert getattr(bpy.types, "MONONPHM_PT_track", None) is None
    mononphm_blender.register()  # leave it registered for the session


def test_panels_draw(scene):
    from mononphm_blender import ui

    ctx = bpy.context
    s = scene.mononphm
    seen = []
    for kind in ("CLIP", "FILE"):
        s.input_kind = kind
        s.model = "OFFICIAL" if kind == "FILE" else "BUILTIN"
        for cls in ui.classes:
            if issubclass(cls, bpy.types.Panel):
                seen += _draw(cls, ctx)
    names = {entry[1] for entry in seen}
    assert {"mononphm.track", "mononphm.import_result", "mononphm.check_backend", "mononphm.retrack"} <= names
    assert {"clip", "input_path", "stride", "preset", "output_mode", "output_dir", "official_dir", "mean_anchors",
            "error_threshold"} <= names
    assert ("template_list", "MONONPHM_UL_bad_frames") in seen
    assert any("own licence" in e[1] for e in seen if e[0] == "label")


def test_track_panel_while_running_and_after_failure(scene):
    from mononphm_blender import job_control, ui

    st = scene.mononphm.job
    job_control._jobs[scene.name] = SimpleNamespace(status=SimpleNamespace(finished=False))
    try:
        st.stage, st.done, st.total, st.progress, st.eta_s = "track", 3, 10, 0.3, 75.0
        log = _draw(ui.MONONPHM_PT_track, bpy.context)
        assert ("progress", "track: 3/10 · ETA 1m15s") in log
        assert ("operator", "mononphm.cancel") in log
        assert not any(e[0] == "label" and "CPU" in e[1] for e in log)
        st.warning = "Tracking does not use 'cuda' in this version: it runs on the CPU."
        assert ("label", st.warning) in _draw(ui.MONONPHM_PT_track, bpy.context)
    finally:
        job_control._jobs.clear()
    st.state, st.error, st.hint, st.log_path = "FAILED", "It broke", "Do X", "/tmp/x.log"
    log = _draw(ui.MONONPHM_PT_track, bpy.context)
    assert ("label", "Log: /tmp/x.log") in log and ("label", "It broke") in log


def test_preferences_draw_and_defaults(scene, monkeypatch):
    from mononphm_blender import prefs

    rna = prefs.MONONPHM_AP_preferences.bl_rna
    monkeypatch.setattr(prefs, "_driver_evidence", lambda: "")  # this machine may have a GPU
    for source in ("ONLINE", "OFFLINE"):
        layout = FakeLayout()
        fake = SimpleNamespace(layout=layout, install_source=source, bl_rna=rna, torch_build="AUTO", base_python="")
        prefs.MONONPHM_AP_preferences.draw(fake, bpy.context)
        names = {entry[1] for entry in layout.log}
        assert {"mononphm.setup_backend", "mononphm.remove_backend", "mononphm.check_backend", "python",
                "device", "base_python", "torch_build"} <= names
        assert ("wheels_dir" in names) == (source == "OFFLINE")
        assert ("label", "CPU: no NVIDIA driver found") in layout.log  # the automatic choice, shown
        version = "%d.%d.%d" % sys.version_info[:3]
        assert ("label", f"Base Python {version} (Blender's own Python): {sys.executable}") in layout.log
        assert ("label", "MediaPipe: legacy face mesh, models inside its wheel") in layout.log  # the bpy wheels: 3.11
    assert {"auto", "cpu", "cuda", "mps"} == {i.identifier for i in rna.properties["device"].enum_items}
    p = prefs.get_prefs(bpy.context)  # not enabled through addon_utils here → defaults
    assert p.device == "auto"
    monkeypatch.setenv("MONONPHM_BACKEND_PYTHON", sys.executable)
    assert prefs.backend_python(bpy.context) == sys.executable


def test_setup_progress_cancel_and_retry_in_preferences_and_sidebar(scene, monkeypatch):
    from mononphm_blender import prefs, ui
    from mononphm_blender.core import installer

    status = installer.InstallStatus(step="download", step_index=2, step_count=6, fraction=0.4,
                                     message="Downloaded 3 of 43 packages · 120.0 MB of 558.2 MB")
    job = SimpleNamespace(status=status, log_path="/tmp/backend-setup.log")
    monkeypatch.setattr(prefs.STATE, "setup", job)
    for draw in (lambda: _draw(ui.MONONPHM_PT_main, bpy.context),
                 lambda: (prefs.draw_backend_status(layout := FakeLayout(), bpy.context), layout.log)[1]):
        log = draw()
        assert ("progress", "Downloading packages (3/6)") in log and ("label", status.message) in log
        assert ("operator", "mononphm.cancel_setup") in log
    status.state, status.error, status.hint = "FAILED", "Downloading packages failed: timed out", "Retry."
    monkeypatch.setattr(prefs.STATE, "setup_message", "Downloading packages failed: timed out. Retry.")
    log = _draw(ui.MONONPHM_PT_main, bpy.context)
    assert ("label", "Downloading packages failed: timed out. Retry.") in log
    assert ("operator", "mononphm.setup_backend") in log and ("label", "Log: /tmp/backend-setup.log") in log
    assert ("operator", "mononphm.cancel_setup") not in log


def test_sidebar_notes_an_unfinished_or_outdated_environment(scene, monkeypatch, tmp_path):
    from mononphm_blender import contracts, prefs, ui
    from mononphm_blender.core import command, installer

    monkeypatch.setattr(prefs.STATE, "setup", None)
    monkeypatch.setattr(prefs, "default_env_dir", lambda p=None: tmp_path)
    assert prefs.environment_note() == ""  # not an environment the add-on made
    (tmp_path / command.ENV_MARKER).write_text("mononphm")
    log = _draw(ui.MONONPHM_PT_main, bpy.context)
    assert ("label", "The backend set-up did not finish: Retry resumes it") in log
    assert ("operator", "mononphm.setup_backend") in log
    stamp = tmp_path / installer.INSTALL_DIR / installer.STAMP
    stamp.parent.mkdir()
    stamp.write_text('{"requirements": "0123"}')
    assert prefs.environment_note().startswith("The packages to install changed")
    digest = installer.requirements_digest(contracts.requirements_file())
    stamp.write_text('{"requirements": "%s"}' % digest)
    assert prefs.environment_note() == ""
    defaults = prefs._Defaults()
    defaults.install_ray = True   # ticking "Batches on Ray" after a set-up without it: set up again
    assert prefs.environment_note(defaults).startswith("The packages to install changed")


def test_bad_frame_list_jumps_to_frame(scene):
    s = scene.mononphm
    for f, e in ((12, 7.5), (40, 9.0)):
        item = s.bad_frames.add()
        item.frame, item.error = f, e
    s.bad_frames_index = 1
    assert scene.frame_current == 40
    s.bad_frames_index = 0
    assert scene.frame_current == 12
