"""The hair benchmark's pooling over tracker seeds (one run's face Chamfer moves by up to 0.4 mm between seeds)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
hair_accuracy = pytest.importorskip("hair_accuracy")


def test_a_clips_figures_are_the_mean_over_seeds_with_each_seed_beside_it():
    hairy = {"face_chamfer_l1_mm": 2.0, "hair_placed_chamfer_l1_mm": 7.0, "hair_icp_chamfer_l1_mm": 3.0,
             "silhouette_iou": 0.86, "silhouette_iou_min": 0.80, "hair_area_fraction": 0.2, "tracked_frames": 6}
    other = {**hairy, "face_chamfer_l1_mm": 2.3, "silhouette_iou": 0.90, "hair_area_fraction": 0.3,
             "tracked_frames": 5}
    pooled = hair_accuracy.pool_seeds([hairy, other])
    assert pooled["face_chamfer_l1_mm"] == pytest.approx(2.15)
    assert pooled["silhouette_iou"] == pytest.approx(0.88) and pooled["hair_area_fraction"] == pytest.approx(0.25)
    assert pooled["face_chamfer_l1_mm_seeds"] == [2.0, 2.3] and pooled["tracked_frames"] == 5
    # a bald clip has no hair figures (None): they stay None, and a model without hair flags has no hair area
    bald = {**hairy, "hair_placed_chamfer_l1_mm": None, "hair_icp_chamfer_l1_mm": None, "hair_area_fraction": None}
    pooled = hair_accuracy.pool_seeds([bald, bald, bald])
    assert pooled["hair_placed_chamfer_l1_mm"] is None and pooled["hair_area_fraction_seeds"] == [None] * 3
    assert pooled["face_chamfer_l1_mm"] == pytest.approx(2.0)
