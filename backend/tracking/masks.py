"""Per-frame head/background labels for the silhouette and colour losses.

MediaPipe selfie segmentation (``mediapipe_graphs``) separates person from background; the face-mesh landmarks give
the face region (face oval) and the mouth interior (inner lip contour). For a model without hair, hair, neck,
shoulders, ears and uncertain pixels are labelled IGNORE: they neither pull the surface nor count as misses. For a
model that represents hair (``hair_region=True``) the rest of the person above the neck line is HEAD_OTHER where its
colour is not the face's skin (hair, beard): it pulls the surface out like the face does. Skin-coloured pixels there
(a bald scalp, ears, the neck) stay IGNORE, so the silhouette never asks the hair to cover skin (on a bald head the
hair parameters absorbed the neck band instead: a beard of 0.5); the body below the neck line stays IGNORE. So do
pixels not coloured like the hair next to the face (``hair_coloured``): the selfie segmentation takes in patches of
a cluttered background beside the hair (8-27 % of the pixels the rays sample near a synthetic head of long hair),
which would pull the head out over the background.

Labels (uint8):
    BACKGROUND = 0   surely not the person: rendered opacity should be 0
    FACE       = 1   skin inside the face oval: opacity 1, colour loss
    MOUTH      = 2   mouth interior: opacity 1, colour loss down-weighted
    IGNORE     = 3   neck, body, uncertain (and hair for a bald model): no loss
    HEAD_OTHER = 4   hair above the neck line (not skin-coloured): opacity 1, colour loss down-weighted
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .mediapipe_graphs import selfie_segmentation_graph

BACKGROUND, FACE, MOUTH, IGNORE, HEAD_OTHER = 0, 1, 2, 3, 4
HEAD = (FACE, MOUTH, HEAD_OTHER)  # labels the rendered head must cover

# the neck line: perpendicular to the chin->forehead axis, this fraction of the face height below the chin
NECK_LINE_BELOW_CHIN = 0.15
# skin colour (``skin_coloured``): chromaticity within this many robust standard deviations of the face's, and at
# least this share of its median brightness (shading changes brightness, not chromaticity; hair is far darker or
# greyer than the skin beside it)
SKIN_CHROMA_TOLERANCE = 3.0
SKIN_MIN_BRIGHTNESS = 0.35
# hair colour (``hair_coloured``): the reference is the non-skin person pixels within HAIR_SEED_REACH face sizes (the
# oval's extent) of the face and above the eyes (EYES_MIDDLE), where hair, not background, meets the face; others are
# hair when their CIE a*b* chromaticity (steady on dark hair, unlike rg) is within HAIR_CHROMA_TOLERANCE robust
# standard deviations of the reference's (at least HAIR_CHROMA_MIN_SPREAD a*b* units: grey hair has almost none).
# Fewer than HAIR_SEED_MIN_AREA face sizes squared of reference (a bald head) leaves the pixels as they are.
HAIR_SEED_REACH = 0.15
HAIR_CHROMA_TOLERANCE = 3.0
HAIR_CHROMA_MIN_SPREAD = 3.0
HAIR_SEED_MIN_AREA = 0.01
CHIN, FOREHEAD = 152, 10
NOSE_BOTTOM = 2   # below the nose tip, above the upper lip
EYES_MIDDLE = 168  # the nose bridge between the eyes
# the hair's outline (``hair_edge``): a band this many face sizes (the landmarks' bounding-box diagonal) wide on
# either side (~7 px on a 200 px face; the IGNORE seam the selfie mask's soft edge leaves between hair and background
# is 1-3 px), on the hair regions within HAIR_FACE_REACH face sizes of the face (past the IGNORE rim around the oval)
HAIR_EDGE_WIDTH = 0.035
HAIR_FACE_REACH = 0.07
# ... and at least this many face sizes squared in area: a dark ear beside a bald head's face (~0.005) is no hair
# outline (with it, a bald clip's fit grew hair: area 0.33), a head of hair is 0.15 or more
HAIR_MIN_AREA = 0.03

# MediaPipe face-mesh contours, ordered (from mediapipe's FACEMESH_FACE_OVAL / FACEMESH_LIPS edge sets)
FACE_OVAL = np.array([10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
                      148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109])
INNER_LIPS = np.array([78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191])
OUTER_LIPS = np.array([61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185])
EYE_CONTOURS = (np.array([33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]),
                np.array([263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]))


class SelfieSegmenter:
    """Person probability map (H, W) float32 in [0, 1] (``mediapipe_graphs``: legacy solution or Tasks API)."""

    def __init__(self):
        self._graph = selfie_segmentation_graph()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self._graph.process(image)

    def close(self):
        self._graph.close()


def _fill(shape, poly: np.ndarray) -> np.ndarray:
    import cv2
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(poly).astype(np.int32).reshape(-1, 1, 2)], 1)
    return m.astype(bool)


def is_head(labels: np.ndarray) -> np.ndarray:
    """Bool mask of the labels the rendered head must cover (face, mouth, and hair/scalp/ears when labelled)."""
    return np.isin(labels, HEAD)


def _along_face_axis(landmarks: np.ndarray, shape, origin: int) -> tuple[np.ndarray, float]:
    """(H, W) pixel-centre distances along the chin -> forehead axis of the landmarks (so they follow head roll) from
    landmark ``origin``, and the chin -> forehead distance (pixels)."""
    H, W = shape[:2]
    up = landmarks[FOREHEAD, :2] - landmarks[CHIN, :2]
    height = float(np.linalg.norm(up)) + 1e-6
    up = up / height
    ys, xs = np.mgrid[0:H, 0:W]
    return (xs + 0.5 - landmarks[origin, 0]) * up[0] + (ys + 0.5 - landmarks[origin, 1]) * up[1], height


def above_neck_line(landmarks: np.ndarray, shape) -> np.ndarray:
    """(H, W) bool: pixels above the neck line (NECK_LINE_BELOW_CHIN face heights below the chin, perpendicular to
    the chin -> forehead axis, so it follows head roll)."""
    along, height = _along_face_axis(landmarks, shape, CHIN)
    return along > -NECK_LINE_BELOW_CHIN * height


def _near_reference(chroma: np.ndarray, reference: np.ndarray, tolerance: float, min_spread: float) -> np.ndarray:
    """(H, W) bool: ``chroma`` (H, W, 2) within ``tolerance`` robust standard deviations (median, MAD, at least
    ``min_spread``) of its values on the ``reference`` pixels (H, W) bool, per channel."""
    ref = chroma[reference]
    centre = np.median(ref, 0)
    spread = np.maximum(1.4826 * np.median(np.abs(ref - centre), 0), min_spread)
    return np.linalg.norm((chroma - centre) / spread, axis=-1) <= tolerance


def skin_coloured(image: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of ``image`` (H, W, 3) uint8 RGB coloured like the reference skin pixels ``skin`` (H, W)
    bool: rg-chromaticity within SKIN_CHROMA_TOLERANCE robust standard deviations of theirs (median, MAD; the face
    oval's eyes, brows and lips are outliers the median ignores) and brightness >= SKIN_MIN_BRIGHTNESS x theirs."""
    rgb = image.astype(np.float32) + 1.0
    total = rgb.sum(-1)
    near = _near_reference(rgb[..., :2] / total[..., None], skin, SKIN_CHROMA_TOLERANCE, 0.005)
    return near & (total >= SKIN_MIN_BRIGHTNESS * np.median(total[skin]))


def hair_coloured(image: np.ndarray, hair: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of ``image`` (H, W, 3) uint8 RGB coloured like the reference hair pixels ``hair`` (H, W)
    bool: CIE a*b* chromaticity within HAIR_CHROMA_TOLERANCE robust standard deviations of theirs (at least
    HAIR_CHROMA_MIN_SPREAD); brightness is free (hair's shading and highlights span most of it)."""
    import cv2
    ab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)[..., 1:].astype(np.float32)
    return _near_reference(ab, hair, HAIR_CHROMA_TOLERANCE, HAIR_CHROMA_MIN_SPREAD)


def lower_face_skin_share(image: np.ndarray, landmarks: np.ndarray) -> float:
    """Share of the lower face's pixels (the face oval below the nose, ``NOSE_BOTTOM``, across the chin -> forehead
    axis; the lips out) coloured like the skin above it (``skin_coloured``): near 1 on a shaven face, low under a
    beard or moustache. NaN where either part is empty."""
    H, W = image.shape[:2]
    face = _fill((H, W), landmarks[FACE_OVAL])
    size = float(np.ptp(landmarks[FACE_OVAL], axis=0).max())
    r = max(1, int(round(0.03 * size)))   # off the oval's border, which mixes skin and background (``head_labels``)
    import cv2
    face = cv2.erode(face.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)).astype(bool)
    along, _ = _along_face_axis(landmarks, (H, W), NOSE_BOTTOM)
    lower = face & (along < 0) & ~_fill((H, W), landmarks[OUTER_LIPS])
    upper = face & (along > 0)
    if not lower.any() or not upper.any():
        return float("nan")
    return float(skin_coloured(image, upper)[lower].mean())


def head_labels(person_prob: Optional[np.ndarray], landmarks: Optional[np.ndarray], shape,
                bg_thresh: float = 0.15, margin_frac: float = 0.03, hair_region: bool = False,
                image: Optional[np.ndarray] = None) -> np.ndarray:
    """Combine the segmentation and the face-mesh region into labels.

    Args:
        person_prob: (H, W) selfie-segmentation probability, or None (then everything outside a dilated face oval
            counts as IGNORE, i.e. no background evidence).
        landmarks: (478, 2) MediaPipe landmarks in pixels, or None (no face: everything IGNORE/BACKGROUND).
        shape: (H, W).
        hair_region: label the person above the neck line HEAD_OTHER (a model with hair); else IGNORE.
        image: (H, W, 3) uint8 RGB frame: with ``hair_region``, its pixels there coloured like the skin, or unlike
            the hair next to the face, stay IGNORE.
    Returns:
        (H, W) uint8 labels.
    """
    import cv2
    H, W = shape[:2]
    lab = np.full((H, W), IGNORE, np.uint8)
    if person_prob is not None:
        lab[person_prob < bg_thresh] = BACKGROUND
    if landmarks is None:
        return lab
    oval = _fill((H, W), landmarks[FACE_OVAL])
    # shrink the oval slightly: its border is where the model's skin meets hair/ears and the detector is least sure
    size = float(np.ptp(landmarks[FACE_OVAL], axis=0).max())
    r = max(1, int(round(margin_frac * size)))
    face = cv2.erode(oval.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)).astype(bool)
    if person_prob is not None:
        face &= person_prob >= 0.5
        if hair_region:
            other = (person_prob >= 0.5) & above_neck_line(landmarks, (H, W))
            if image is not None and face.any():
                # not skin, and not the thin rims left along the head's outline (whose pixels mix skin and background)
                kernel = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
                other = cv2.morphologyEx((other & ~skin_coloured(image, face)).astype(np.uint8), cv2.MORPH_OPEN,
                                         kernel).astype(bool)
                # and coloured like the hair just outside the upper face (not the brows and eyes inside the oval;
                # below the eyes: neck shadows, collars, beards)
                near = cv2.distanceTransform((~oval).astype(np.uint8), cv2.DIST_L2, 3) <= HAIR_SEED_REACH * size
                seed = other & near & ~oval & (_along_face_axis(landmarks, (H, W), EYES_MIDDLE)[0] > 0)
                if seed.sum() >= HAIR_SEED_MIN_AREA * size ** 2:
                    other = cv2.morphologyEx((other & hair_coloured(image, seed)).astype(np.uint8), cv2.MORPH_OPEN,
                                             kernel).astype(bool)
            lab[other] = HEAD_OTHER
    lab[face] = FACE
    mouth = _fill((H, W), landmarks[INNER_LIPS])
    lab[mouth & (lab != BACKGROUND)] = MOUTH
    return lab


def hair_edge(labels: np.ndarray, face_size: float) -> np.ndarray:
    """(H, W) bool: the hair's outline, HEAD_OTHER pixels within HAIR_EDGE_WIDTH face sizes of BACKGROUND and
    BACKGROUND pixels within as far of HEAD_OTHER (both sides: the silhouette is pulled out and held in alike), on
    the hair regions that reach the face and are not small (a background blob the person mask took in, a dark ear,
    stay out); all False where no hair is labelled (a model without hair)."""
    import cv2
    hair, bg = labels == HEAD_OTHER, labels == BACKGROUND
    if not hair.any() or not bg.any():
        return np.zeros(labels.shape, bool)

    def distance_to(region):
        return cv2.distanceTransform((~region).astype(np.uint8), cv2.DIST_L2, 3)

    _, parts = cv2.connectedComponents(hair.astype(np.uint8), connectivity=8)
    touching = np.unique(parts[hair & (distance_to(labels == FACE) <= HAIR_FACE_REACH * face_size)])
    large = np.flatnonzero(np.bincount(parts.ravel()) >= HAIR_MIN_AREA * face_size ** 2)
    hair = np.isin(parts, np.intersect1d(touching[touching > 0], large))
    width = HAIR_EDGE_WIDTH * face_size
    return (hair & (distance_to(bg) <= width)) | (bg & (distance_to(hair) <= width))


def eye_openings(landmarks: np.ndarray, shape) -> np.ndarray:
    """(H, W) bool: inside either eyelid contour of the MediaPipe landmarks (478, 2) pixels (empty when closed)."""
    H, W = shape[:2]
    return _fill((H, W), landmarks[EYE_CONTOURS[0]]) | _fill((H, W), landmarks[EYE_CONTOURS[1]])


def label_weights(labels: np.ndarray, mouth_color_weight: float = 1.0 / 25.0, head_other_color_weight: float = 0.25):
    """Per-pixel (mask_target, mask_weight, colour_weight) float32 maps from labels (hair is darker, glossier and
    less well modelled than skin: its colour counts less)."""
    target = is_head(labels).astype(np.float32)
    mask_w = (labels != IGNORE).astype(np.float32)
    col_w = ((labels == FACE).astype(np.float32) + mouth_color_weight * (labels == MOUTH)
             + head_other_color_weight * (labels == HEAD_OTHER))
    return target, mask_w, col_w.astype(np.float32)
