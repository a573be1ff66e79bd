"""The per-channel ARKit output table (``backend.tracking.channel_table``) and its calibration
(``backend.training.arkit_channels``)."""
import json

import numpy as np
import pytest

from backend import BUILTIN_MODEL_DIR
from backend.contracts import arkit
from backend.tracking.channel_table import FILE_NAME, ChannelTable, table_file, table_path
from backend.evaluation.channel_metrics import events_found
from backend.training import arkit_channels as ac

BLINK = arkit.ARKIT_INDEX["eyeBlinkLeft"]
SQUINT = arkit.ARKIT_INDEX["eyeSquintLeft"]


def _table(**rows) -> ChannelTable:
    channels = {n: {"shares": {}} for n in arkit.ARKIT_NAMES}
    channels.update(rows)
    return ChannelTable(channels)


@pytest.mark.parametrize("preset", ["draft", "standard"])
def test_the_builtin_table_loads_and_ships_zero_for_gaze_and_tongue(preset):
    # each preset's own table, calibrated on the tuning clips tracked with that preset
    assert table_path(BUILTIN_MODEL_DIR, preset) == BUILTIN_MODEL_DIR / table_file(preset)
    table = ChannelTable.load(BUILTIN_MODEL_DIR, preset)
    assert len(table.channels) == 52 and len(table.notes["clips"]) == 29
    assert set(arkit.UNDRIVEN_ARKIT) <= set(table.zeroed())
    from backend.tracking.region_image import REGIONS

    from backend.tracking.codes import LANDMARK_SOURCE, LINEAR_SOURCE

    assert set(table.sources()) <= {"model", LANDMARK_SOURCE, LINEAR_SOURCE} | {f"{r.name}_image" for r in REGIONS}
    # the mouth and jaw readers' raw heads carry frowns, stretches and the jaw's opening (session 14)
    assert {"jaw_image", "mouth_image"} <= set(table.sources())
    assert not {"mouthFrownLeft", "mouthStretchLeft", "jawOpen"} & set(table.zeroed())
    # the brow reader carries the inner brow raise, which no other reading tracked better than zeros (session 15)
    assert "brows_image" in table.channels["browInnerUp"]["shares"]
    # the jaw reader trained on lips sealed over an open jaw carries mouthClose (session 15)
    assert "jaw_image" in table.channels["mouthClose"]["shares"]
    if preset == "draft":   # the landmark map's linear reading, blended with the images, carries the jaw aside (s18)
        assert LINEAR_SOURCE in table.channels["jawLeft"]["shares"] and "jawRight" not in table.zeroed()
    assert ChannelTable.from_json(json.loads(json.dumps(table.to_json()))).channels == table.channels


def test_each_preset_uses_its_own_table_and_one_without_uses_drafts(tmp_path):
    draft = _table(jawOpen={"shares": {"model": 1.0}})
    standard = _table(jawOpen={"shares": {"landmarks": 1.0}, "dead_zone": 0.1})
    draft.save(tmp_path / FILE_NAME)
    # a folder with only the one table (as before per-preset tables): every preset uses it
    for preset in ("draft", "standard", "high"):
        assert ChannelTable.load(tmp_path, preset).channels == draft.channels
    standard.save(tmp_path / table_file("standard"))
    assert table_file("draft") == FILE_NAME and table_file("standard") == "arkit_channels_standard.json"
    assert ChannelTable.load(tmp_path, "standard").channels == standard.channels
    assert ChannelTable.load(tmp_path).channels == ChannelTable.load(tmp_path, "draft").channels == draft.channels
    assert table_path(tmp_path, "high") == tmp_path / FILE_NAME            # no table of its own: draft's
    (tmp_path / FILE_NAME).unlink()
    assert table_path(tmp_path, "high") is None and table_path(tmp_path, "standard").name == table_file("standard")
    x = np.random.default_rng(0).random((2, 52)).astype(np.float32)
    assert np.array_equal(ChannelTable.load(tmp_path, "high")({"model": x}), x)   # neither: the model's reading


def test_the_model_card_names_each_presets_table_and_what_it_zeroes(tmp_path):
    from backend.training.model_card import arkit_output_line

    assert arkit_output_line(tmp_path) is None
    _table(jawOpen={"shares": {"model": 1.0}}, mouthClose={"shares": {"model": 1.0}}).save(tmp_path / FILE_NAME)
    assert "arkit_channels_standard" not in arkit_output_line(tmp_path)
    _table(jawOpen={"shares": {"model": 1.0}}).save(tmp_path / table_file("standard"))
    line = arkit_output_line(tmp_path)
    assert "`arkit_channels.json` for draft, `arkit_channels_standard.json` for standard" in line
    assert "50 of 52 channels are always 0" in line and "in the standard preset's table 51:" in line


def test_a_folder_without_a_table_ships_the_model_reading(tmp_path):
    table = ChannelTable.load(tmp_path)
    x = np.random.default_rng(0).random((4, 52)).astype(np.float32)
    assert np.array_equal(table({"model": x}), x)


def test_a_table_without_all_channels_or_with_bad_shares_is_refused():
    with pytest.raises(ValueError, match="52 ARKit channels"):
        ChannelTable({"jawOpen": {"shares": {"model": 1.0}}})
    with pytest.raises(ValueError, match="sum to 1"):
        _table(jawOpen={"shares": {"model": 0.5}})
    with pytest.raises(ValueError, match="format"):
        ChannelTable.from_json({"channels": {}})


def test_a_channel_marked_zero_ships_zero():
    table = _table(eyeBlinkLeft={"shares": {"model": 1.0}})
    model = np.full((3, 52), 0.7, np.float32)
    out = table({"model": model, "landmarks": model})
    assert (out[:, BLINK] == pytest.approx(0.7)) and not np.delete(out, BLINK, 1).any()


def test_the_dead_zone_removes_a_small_false_reading_but_keeps_a_blink():
    reading = np.zeros((10, 52), np.float32)
    reading[:, BLINK] = [0.04, 0.06, 0.05, 0.3, 0.9, 0.95, 0.4, 0.05, 0.03, 0.06]   # a blink over noise at rest
    table = _table(eyeBlinkLeft={"shares": {"model": 1.0}, "dead_zone": 0.1, "gain": 1.0})
    out = table({"model": reading})[:, BLINK]
    assert not out[[0, 1, 2, 7, 8, 9]].any()
    assert out[4] >= 0.5 and out[5] == pytest.approx(0.85 / 0.9) and out[3] == pytest.approx(0.2 / 0.9)


def test_a_blend_renormalises_over_the_sources_with_a_reading_and_falls_back_to_the_model():
    model = np.full((3, 52), 0.2, np.float32)
    mouth = np.full((3, 52), np.nan, np.float32)
    mouth[[0, 2], SQUINT] = 0.6
    table = _table(eyeSquintLeft={"shares": {"model": 0.25, "mouth_image": 0.75}},
                   eyeBlinkLeft={"shares": {"mouth_image": 1.0}})
    out = table({"model": model, "mouth_image": mouth})
    assert out[:, SQUINT] == pytest.approx([0.5, 0.2, 0.5])
    assert out[:, BLINK] == pytest.approx([0.2, 0.2, 0.2])   # no mouth reading there: the model's value


def _clips(seed=0, n=8, T=60):
    """Synthetic readings files: eyeBlinkLeft active in half the clips; source ``signal`` follows it with noise, the
    ``model`` reads 0-0.6 at random on every channel."""
    rng = np.random.default_rng(seed)
    clips = []
    for k in range(n):
        truth = np.zeros((T, 52))
        if k % 2 == 0:
            truth[20:26, BLINK] = rng.uniform(0.5, 1.0)
        signal = np.clip(truth + rng.normal(0, 0.03, truth.shape), 0, 1)
        clips.append({"truth": truth, "sources": {"model": rng.uniform(0, 0.6, truth.shape), "signal": signal}})
    return clips


def test_calibration_ships_the_signal_source_and_zero_for_noise():
    clips = _clips()
    blink = ac.calibrate_unit(clips, (BLINK,))
    assert blink["shares"] == {"signal": 1.0} and blink["dead_zone"] > 0
    assert blink["cv"]["loss_out_of_fold"] < blink["cv"]["loss_zeros"]
    squint = ac.calibrate_unit(clips, (SQUINT,))   # idle everywhere: only the noise reads anything
    assert squint["shares"] == {}


def test_calibration_restores_a_reading_that_follows_at_a_fifth_of_the_height():
    clips = _clips()
    for c in clips:
        c["sources"]["signal"][:, BLINK] *= 0.2
    blink = ac.calibrate_unit(clips, (BLINK,))
    assert blink["shares"] == {"signal": 1.0} and blink["gain"] >= 4
    assert blink["cv"]["loss_out_of_fold"] < 0.5 * blink["cv"]["loss_zeros"]


def test_the_blink_choice_finds_nine_events_in_ten_where_the_loss_alone_reads_low_blinks_under_half():
    """Tall blinks read at their height, short low ones (true 0.56) at 0.8 of it, and rest frames now and then at
    0.2-0.4: the least loss reads the low blinks under 0.5 (6 events of 10); the event floor asks for 9 of 10, and the
    response found still beats zeros out of fold."""
    rng = np.random.default_rng(0)
    clips = []
    for k in range(10):
        truth = np.zeros((60, 52))
        low = k % 3 == 0
        truth[20:23, BLINK] = np.array([0.3, 1.0, 0.3]) * (0.56 if low else 0.8)
        noise = rng.uniform(0.2, 0.4, truth.shape) * (rng.random(truth.shape) < 0.05) * (truth == 0)
        read = truth * (0.8 if low else 1.0) + noise
        clips.append({"truth": truth, "sources": {"model": read, "signal": read}})
    blink = ac.calibrate_unit(clips, (BLINK,))
    assert blink["shares"] == {"signal": 1.0}
    assert blink["cv"]["events"] == 10 and blink["cv"]["events_in_fold"] >= 9 and blink["cv"]["events_out_of_fold"] >= 9
    assert blink["cv"]["loss_out_of_fold"] < blink["cv"]["loss_zeros"]
    table = _table(eyeBlinkLeft={k: v for k, v in blink.items() if k != "cv"})
    assert sum(events_found(c["truth"][:, BLINK], table(c["sources"])[:, BLINK])[0] for c in clips) >= 9


def test_calibrate_writes_a_table_that_loads(tmp_path):
    clips = _clips(n=4)
    for k, c in enumerate(clips):
        np.savez(tmp_path / f"clip{k}.npz", truth=c["truth"], package=np.zeros_like(c["truth"]),
                 **{ac.SOURCE_PREFIX + s: r for s, r in c["sources"].items()})
    readings = ac.load_readings(tmp_path)
    table = ac.calibrate(readings)
    table.save(tmp_path / FILE_NAME)
    loaded = ChannelTable.load(tmp_path)
    assert loaded.channels == table.channels and loaded.notes["clips"] == sorted(readings)
    assert "eyeBlinkLeft" not in loaded.zeroed() and "eyeLookInLeft" in loaded.zeroed()
    assert loaded.channels["eyeBlinkRight"] == loaded.channels["eyeBlinkLeft"]   # a Left/Right pair: one choice
    res = ac.evaluate(readings, loaded)
    assert res["table"]["overall"]["mae"] < res["zeros"]["overall"]["mae"]


def test_the_source_report_shows_which_source_carries_a_channel():
    clips = _clips()
    clips[1]["sources"]["flat"] = np.full((60, 52), 0.1)   # a constant reading, only on one (idle) clip
    for c in clips:
        c["sources"]["signal"][:, BLINK] *= 0.5             # follows at half the height
    report = ac.source_report({f"clip{k}": c for k, c in enumerate(clips)}, ["eyeBlinkLeft", "eyeSquintLeft"])
    assert list(report) == ["eyeBlinkLeft"]                 # no active pair of the squint
    signal, model = report["eyeBlinkLeft"]["signal"], report["eyeBlinkLeft"]["model"]
    assert signal["pairs"] == 4 and signal["correlation"] > 0.9 and model["correlation"] < 0.4
    assert signal["peak_ratio"] == pytest.approx(0.5, abs=0.1) and signal["mae"] < signal["zeros_mae"] < model["mae"]
    assert signal["idle_mean"] < 0.03 < 0.2 < model["idle_mean"]
    assert "flat" not in report["eyeBlinkLeft"]             # a source without an active pair it reads
    assert "| eyeBlinkLeft | 4 |" in ac.format_sources(report)


def test_the_out_of_fold_output_scores_what_calibrate_records_for_each_unit():
    from backend.evaluation.channel_metrics import ACTIVE_PEAK

    clips = _clips(n=6)
    readings = {f"clip{k}": c for k, c in enumerate(clips)}
    outs = ac.out_of_fold(readings)
    table = ac.calibrate(readings)
    for channel in (BLINK, SQUINT):
        name = arkit.ARKIT_NAMES[channel]
        err = np.array([[np.abs(outs[k][:, channel] - c["truth"][:, channel]).mean()] for k, c in readings.items()])
        active = np.array([[c["truth"][:, channel].max() >= ACTIVE_PEAK] for c in clips])
        assert ac.balanced_loss(err, active) == pytest.approx(table.notes["cv"][name]["loss_out_of_fold"], abs=1e-5) \
            or not table.channels[name]["shares"]
    assert table.channels["eyeBlinkLeft"]["shares"] and any(o[:, BLINK].max() > 0.4 for o in outs.values())
    assert not any(o[:, SQUINT].any() for o in outs.values())   # a unit that ships 0 reads 0 out of fold too
    for c in clips:
        c["package"] = np.zeros_like(c["truth"])
    res = ac.evaluate(readings, outputs=outs)
    assert res["table"]["overall"]["events_found"] >= 2 and res["zeros"]["overall"]["events_found"] == 0
