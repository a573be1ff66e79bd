"""Expression channels read from the image around the mouth, the jaw and the eyes (inference only, no training code).

Why: MediaPipe's points follow the lips' and lids' outlines, and many channels leave no linear trace in them: frown,
dimple, press, roll, lower lip down, jaw sideways and forward and mouth close around the mouth (out-of-fold on the
landmark regressor's training renders their best reading has exactly the all-zeros error), squint around the eyes
(out-of-fold correlation 0.13-0.15), while short blinks read low (or, in dim light, not at all) and the brows' raise
reads compressed by a pose-dependent residual of the points (backend/evaluation/README.md). They change the lips'
thickness, contact and colour, the lids' and cheeks' folds and the forehead's shading, which the image shows. So a
small network per face region reads them from a frontalised patch of that region:

- ``Region``: a fixed grid on the ICT mean head (MediaPipe's points on it, their depth interpolated between them;
  the jaw's reaches below the chin, where the nearest point's depth stands in);
  ``region_patches`` carries every region's grid into the frame by one similarity, the one that aligns the frame's
  nearly rigid points (eye corners, nose, forehead: ``expression_init.ALIGN_POINTS``) onto the same points of the
  mean head, and samples the RGB frame there (bilinear, 2x2 supersampled): the head pose is divided out, the face's
  motion stays in the patch; a ``mirrored`` region (``LIDS``: each eye at about 1 mm per pixel; ``BROWS``: each brow
  and its half of the forehead) is cut on one side of the face and on its mirror image, so that one network reads
  both sides;
- features (``patch_features``): chromaticity (r, g: lips against skin, whatever the light's strength) and log grey
  minus the patch's mean, minus the clip's rest features (their per-pixel median over the clip's frames, as
  ``expression_init.rest_features``): the person's own face and the clip's light are divided out;
- ``RegionImageNet``: the mean of a few small networks (three convolutions and a linear layer each) -> the ICT
  weights of the region's channels, then a response per channel (a dead zone and a gain), clamped to [0, 1]: the
  eyes' chosen out of fold on the training identities; the mouth's, the jaw's, the lids' and the brows' none (gain
  1, no dead zone), their raw readings calibrated by the ARKit channel table on the tuning clips
  (``tracking.channel_table``);
- trained on renders of random ICT-FaceKit heads with MakeHuman skin detail (``backend/training/region_image.py``),
  shipped beside the model as one file per region (``Region.file_name``: a plain state dict, loaded with
  ``weights_only=True``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..contracts import arkit
from ..model.checkpoint import CheckpointError, safe_torch_load
from .expression_init import ALIGN_POINTS, template

N_FEATURES = 3           # feature planes per patch pixel (``patch_features``)
OUTSIDE_GREY = 0.5       # the patch's value where the grid leaves MediaPipe's points


@dataclass(frozen=True)
class Region:
    """A patch of the mean head, spanned by MediaPipe point ids."""

    name: str                     # the region's key (``Detections.patches``, the arrays' ``<name>_patches``)
    file_name: str                # its network's file beside the model
    shape: Tuple[int, int]        # (rows, columns) of the patch
    sides: Tuple[int, int]        # points whose x spans the patch's width, widened by ``margin`` on each side
    top_bottom: Tuple[int, int]   # points whose y are the patch's top and bottom rows
    margin: float                 # share of the sides' distance added on each side
    below: float = 0.0            # share of the top-bottom distance added below the bottom row
    # sample beyond MediaPipe's points too (at the nearest point's depth) instead of holding those pixels at
    # ``OUTSIDE_GREY``: the chin's outline, which an open, sideways or forward jaw moves, lies there
    beyond: bool = False
    # cut twice: on the grid (one side of the face) and on its mirror image across the face's midline, flipped back,
    # so that one network reads both sides alike; the patch is then (2, rows, cols, 3): [the grid's side, the other]
    mirrored: bool = False

    @property
    def patch_shape(self) -> Tuple[int, ...]:
        """The shape of one frame's patch of this region."""
        return ((2,) if self.mirrored else ()) + tuple(self.shape) + (3,)


# the lower face: mouth corners widened by 35 % of the mouth width on each side, subnasale (2) to chin (152)
MOUTH = Region("mouth", "mouth_image.pt", (24, 32), (61, 291), (2, 152), 0.35)
# the lower face and the jaw: as the mouth's, down to 35 % of the subnasale-chin distance below the chin, so that the
# chin's outline stays in the patch as the jaw opens or moves aside, at a finer 1.8 mm per pixel (the mouth's 2.5)
JAW = Region("jaw", "jaw_image.pt", (48, 40), (61, 291), (2, 152), 0.35, below=0.35, beyond=True)
# both eyes and brows: the brows' outer ends (70, 300) widened by 5 %, the forehead's top (10: room for raised brows)
# to the cheeks' top below the lower lids (117)
EYES = Region("eyes", "eye_image.pt", (32, 64), (70, 300), (10, 117), 0.05)
# each eye's lids at about 1 mm per pixel (the eyes' lids span 2-4 pixels of the EYES patch): the subject's left eye
# (image right, the ICT/ARKit "Left" channels) from its inner to its outer corner (362, 263) widened by 25 %, the
# brow's top (334) to the cheek below the lower lid (346); its mirror image is the right eye
LIDS = Region("lids", "lid_image.pt", (40, 48), (362, 263), (334, 346), 0.25, mirrored=True)
# each brow and its half of the forehead at about 1 mm per pixel (the EYES patch gives a brow 3-4 pixels; the points
# read browInnerUp at a third of its height and 0.2-0.4 on clips without it): the subject's left brow from the
# midline (168, widened by 10 % onto the other brow's inner end) past its outer end (300), the forehead's middle (151)
# to the upper lid (386); beyond MediaPipe's points (the temple at the top outer corner) sampled as the jaw's; its
# mirror image is the right brow
BROWS = Region("brows", "brow_image.pt", (40, 64), (168, 300), (151, 386), 0.1, beyond=True, mirrored=True)
REGIONS = (MOUTH, JAW, EYES, LIDS, BROWS)


@lru_cache(maxsize=None)
def patch_grid(region: Region, mirror: bool = False) -> np.ndarray:
    """(2 * rows, 2 * cols, 3) points on the mean head in the template's frame (x right, y down, depth away;
    ``expression_init.template``), two samples per patch pixel and axis; NaN depth beyond MediaPipe's points (the
    nearest point's depth for a region that samples there, ``Region.beyond``). ``mirror``: the grid's mirror image
    across the midline (x -> -x, column by column: the patch cut there shows the other side as the grid's side looks,
    e.g. the inner eye corner in the same columns)."""
    from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

    tpl = template()
    left, right = tpl[region.sides[0], 0], tpl[region.sides[1], 0]
    lo, hi = min(left, right), max(left, right)
    pad = region.margin * (hi - lo)
    top, bottom = tpl[region.top_bottom[0], 1], tpl[region.top_bottom[1], 1]
    bottom += region.below * (bottom - top)
    rows, cols = 2 * region.shape[0], 2 * region.shape[1]
    y, x = np.meshgrid(np.linspace(top, bottom, rows), np.linspace(lo - pad, hi + pad, cols), indexing="ij")
    if mirror:
        x = -x
    depth = LinearNDInterpolator(tpl[:, :2], tpl[:, 2])(x, y)
    if region.beyond:
        depth = np.where(np.isnan(depth), NearestNDInterpolator(tpl[:, :2], tpl[:, 2])(x, y), depth)
    return np.stack([x, y, depth], -1)


@lru_cache(maxsize=None)
def patch_outside(region: Region, mirror: bool = False) -> np.ndarray:
    """(rows, cols) bool: the patch pixels with a grid sample beyond MediaPipe's points (held at ``OUTSIDE_GREY``)."""
    r, c = region.shape
    return np.isnan(patch_grid(region, mirror)[..., 2]).reshape(r, 2, c, 2).any((1, 3))


def region_patches(image: np.ndarray, points: np.ndarray, regions: Sequence[Region] = REGIONS
                   ) -> Dict[str, np.ndarray]:
    """(H, W, 3) uint8 RGB frame and its (>=468, 3) MediaPipe points (u, v, relative depth; pixels) -> region name ->
    float32 RGB patch in [0, 1] of shape ``region.patch_shape``."""
    import cv2

    from ..contracts.geometry import fit_similarity

    idx = list(ALIGN_POINTS)
    s, R, t = fit_similarity(np.asarray(points, np.float64)[idx, :3], template()[idx])
    image = np.ascontiguousarray(image)
    out = {}
    for region in regions:
        sides = []
        for mirror in (False, True) if region.mirrored else (False,):
            uv = np.nan_to_num(((patch_grid(region, mirror) - t) @ R) / s)   # the inverse similarity: template -> uv
            # pixel centres at integer + 0.5 (MediaPipe's points are in pixel units from the image's corner)
            fine = cv2.remap(image, (uv[..., 0] - 0.5).astype(np.float32), (uv[..., 1] - 0.5).astype(np.float32),
                             cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            r, c = region.shape
            patch = fine.reshape(r, 2, c, 2, 3).mean((1, 3), dtype=np.float32) / 255.0
            patch[patch_outside(region, mirror)] = OUTSIDE_GREY
            sides.append(patch)
        out[region.name] = np.stack(sides) if region.mirrored else sides[0]
    return out


def patch_features(patches: np.ndarray) -> np.ndarray:
    """(..., rows, cols, 3) RGB patches -> (..., 3, rows, cols) float32 features: chromaticity r and g, log grey minus
    the patch's mean."""
    p = np.asarray(patches, np.float64)
    total = p.sum(-1) + 0.03
    grey = np.log(p.mean(-1) + 0.02)
    grey -= grey.mean((-2, -1), keepdims=True)
    return np.stack([p[..., 0] / total, p[..., 1] / total, grey], -3).astype(np.float32)


def rest_patch_features(patches: np.ndarray) -> np.ndarray:
    """(T, [2,] rows, cols, 3) patches of a clip's frames with a face -> ([2,] 3, rows, cols) the clip's rest
    features."""
    return np.median(patch_features(patches), axis=0)


def _member(n_channels: int, shape: Tuple[int, int], halvings: int = 2) -> torch.nn.Sequential:
    r, c = shape
    layers = [torch.nn.Conv2d(N_FEATURES, 16, 3, padding=1), torch.nn.ReLU()]
    for k in range(halvings):   # each a stride-2 convolution: the patch's rows and columns halve (rounded up)
        layers += [torch.nn.Conv2d(16 if k == 0 else 32, 32, 3, stride=2, padding=1), torch.nn.ReLU()]
        r, c = (r + 1) // 2, (c + 1) // 2
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Dropout(0.3),
                               torch.nn.Linear(32 * r * c, n_channels))


class RegionImageNet(torch.nn.Module):
    """(B, 3, rows, cols) rest-relative features -> (B, C) readings of the ICT weights ``ict_index`` (0 at rest): the
    mean of ``members`` networks trained apart (their training variance is large), each three convolutions (or
    ``halvings`` + 1: each more halves the patch that the linear layer reads, which holds most of the weights) and a
    linear layer.

    Buffers (saved with the weights): ``ict_index`` (C,) the channels' indices in ``arkit.ICT_NAMES``, ``rest`` (3,
    rows, cols) the training identities' mean rest features (stands in for a clip's), ``scale`` (3,) the features'
    spread per plane, ``gain`` and ``dead_zone`` (C,) the calibrated response per channel:
    clip(gain * (reading - dead_zone), 0, 1)."""

    def __init__(self, n_channels: int, shape: Tuple[int, int], members: int = 1, halvings: int = 2):
        super().__init__()
        self.members = torch.nn.ModuleList(_member(n_channels, shape, halvings) for _ in range(members))
        self.register_buffer("ict_index", torch.zeros(n_channels, dtype=torch.long))
        self.register_buffer("rest", torch.zeros((N_FEATURES,) + tuple(shape)))
        self.register_buffer("scale", torch.ones(N_FEATURES))
        self.register_buffer("gain", torch.ones(n_channels))
        self.register_buffer("dead_zone", torch.zeros(n_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / self.scale[:, None, None]
        # minus each member's reading of the rest patch itself (features 0): a face at rest reads 0
        both = torch.cat([x, torch.zeros_like(x[:1])])
        read = torch.stack([m(both) for m in self.members]).mean(0)
        return read[:-1] - read[-1:]

    @classmethod
    def from_state(cls, state: Dict[str, torch.Tensor]) -> "RegionImageNet":
        """The network a saved state dict describes (its channels, patch shape, member count and halvings)."""
        members = len({k.split(".")[1] for k in state if k.startswith("members.")})
        convs = sum(1 for k, v in state.items()
                    if k.startswith("members.0.") and k.endswith(".weight") and v.dim() == 4)
        net = cls(len(state["ict_index"]), tuple(state["rest"].shape[1:]), members, convs - 1)
        net.load_state_dict(state)
        return net


class RegionImageRegressor:
    """A region's shipped ``RegionImageNet`` with its patch features: patches -> calibrated ICT weights of
    ``channels``. A mirrored region's network reads the channels of the grid's side; the regressor reads the same
    channels of the other side from the mirrored patch (``arkit.mirror_name``), after them in ``channels``."""

    def __init__(self, region: Region, net: RegionImageNet):
        self.region = region
        self.net = net.eval()
        own = tuple(arkit.ICT_NAMES[i] for i in net.ict_index.tolist())
        self.channels = own + tuple(arkit.mirror_name(c) for c in own) if region.mirrored else own

    @classmethod
    def load(cls, model_dir: Path, region: Region) -> Optional["RegionImageRegressor"]:
        """The region's regressor shipped in ``model_dir`` (None when the model has none)."""
        path = Path(model_dir) / region.file_name
        if not path.is_file():
            return None
        state = safe_torch_load(path)
        try:
            return cls(region, RegionImageNet.from_state(state))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path.name} does not hold a {region.name} image reader ({type(e).__name__}: {e})",
                                  "write it again with python -m backend.training.region_image, or remove it") from None

    def linear(self, patches: np.ndarray, rest: Optional[np.ndarray] = None) -> np.ndarray:
        """(B, *region.patch_shape) patches, optional ([2,] 3, rows, cols) rest features (default: the training
        identities' mean) -> (B, C) the network's readings (uncalibrated) of ``channels``."""
        f = torch.as_tensor(patch_features(patches))
        f = f - (self.net.rest if rest is None else torch.as_tensor(rest))
        with torch.no_grad():
            if not self.region.mirrored:
                return self.net(f).numpy()
            # (B, 2, 3, rows, cols): both sides as frames of one batch -> (B, [the grid's side's C, the other's C])
            return self.net(f.reshape((-1,) + f.shape[2:])).numpy().reshape(len(f), -1)

    def __call__(self, patches: np.ndarray, rest: Optional[np.ndarray] = None) -> np.ndarray:
        """(B, *region.patch_shape) patches -> (B, C) ICT weights of ``channels`` in [0, 1]."""
        sides = 2 if self.region.mirrored else 1
        gain, dead_zone = np.tile(self.net.gain.numpy(), sides), np.tile(self.net.dead_zone.numpy(), sides)
        return np.clip(gain * (self.linear(patches, rest) - dead_zone), 0.0, 1.0).astype(np.float32)


def load_regressors(model_dir: Path) -> Dict[str, RegionImageRegressor]:
    """Region name -> the regressor shipped in ``model_dir``, for each region that has one."""
    found = {r.name: RegionImageRegressor.load(model_dir, r) for r in REGIONS}
    return {name: reg for name, reg in found.items() if reg is not None}


__all__ = ["BROWS", "EYES", "JAW", "LIDS", "MOUTH", "REGIONS", "Region", "RegionImageNet", "RegionImageRegressor",
           "load_regressors", "patch_features", "patch_grid", "patch_outside", "region_patches",
           "rest_patch_features"]
