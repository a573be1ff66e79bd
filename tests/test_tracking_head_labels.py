"""Head labels with a hair region: the person above the neck line pulls the surface (a model with hair), the body
below it never does, and a model without hair keeps everything outside the face ignored."""

import numpy as np

from backend.tracking import masks as M


def _face(H=200, W=160, roll_deg=0.0):
    """Synthetic MediaPipe points (478, 2): a face oval of radius 30 px around (80, 80), chin at the bottom."""
    lm = np.zeros((478, 2))
    ang = np.linspace(0, 2 * np.pi, len(M.FACE_OVAL), endpoint=False)
    lm[M.FACE_OVAL] = np.stack([80 + 25 * np.sin(ang), 80 - 32 * np.cos(ang)], 1)
    lm[M.FOREHEAD] = (80, 48)
    lm[M.CHIN] = (80, 112)
    lm[M.INNER_LIPS] = np.stack([80 + 6 * np.cos(np.linspace(0, 2 * np.pi, 20)),
                                 100 + 2 * np.sin(np.linspace(0, 2 * np.pi, 20))], 1)
    if roll_deg:
        a = np.deg2rad(roll_deg)
        R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        lm = (lm - (80, 80)) @ R.T + (80, 80)
    # person: a head disc (hair) of radius 45 px and the shoulders from y = 150 down
    ys, xs = np.mgrid[0:H, 0:W]
    person = ((xs - 80) ** 2 + (ys - 75) ** 2 < 45 ** 2) | (ys > 150)
    return lm, person.astype(np.float32)


def test_hair_region_above_the_neck_line():
    lm, prob = _face()
    bald = M.head_labels(prob, lm, prob.shape)
    hair = M.head_labels(prob, lm, prob.shape, hair_region=True)
    # the face and mouth are the same either way
    assert np.array_equal(bald == M.FACE, hair == M.FACE) and np.array_equal(bald == M.MOUTH, hair == M.MOUTH)
    assert not (bald == M.HEAD_OTHER).any()
    other = hair == M.HEAD_OTHER
    assert other[35, 80] and other[80, 40]            # hair above and beside the face
    assert bald[35, 80] == M.IGNORE
    assert not other[150:].any()                       # shoulders: below the neck line
    assert hair[180, 80] == M.IGNORE and hair[5, 5] == M.BACKGROUND
    tgt, w, cw = M.label_weights(hair)
    assert tgt[35, 80] == 1 and w[35, 80] == 1 and 0 < cw[35, 80] < cw[80, 80]
    assert w[180, 80] == 0


def test_neck_line_follows_head_roll():
    lm, _ = _face(roll_deg=40)
    above = M.above_neck_line(lm, (200, 160))
    assert above[80, 80] and above[tuple(np.round(lm[M.FOREHEAD][::-1]).astype(int))]
    chin = lm[M.CHIN]
    down = (chin - lm[M.FOREHEAD]) / np.linalg.norm(chin - lm[M.FOREHEAD])
    below = np.round(chin + 30 * down).astype(int)
    assert not above[below[1], below[0]]


def test_only_hair_coloured_pixels_pull_the_hair_out():
    """With the frame, the person above the neck line is HEAD_OTHER only where it is not skin-coloured: hair pulls
    the surface out, skin there (a bald scalp, ears, the neck) is ignored, even in shadow, and so is the thin rim of
    mixed colours along the outline."""
    lm, prob = _face()
    H, W = prob.shape
    ys, xs = np.mgrid[0:H, 0:W]
    skin = np.array([205, 150, 120], np.float32)
    image = np.empty((H, W, 3), np.float32)
    image[:] = (90, 140, 200)                                          # blue background
    image[prob > 0] = skin
    image[(prob > 0) & (ys < 60)] = (60, 55, 50)                       # dark hair on top of the head
    image[(prob > 0) & (ys >= 60) & (xs > 112)] = skin * 0.55          # the subject's left side in shadow (an ear)
    rim = ((xs - 80) ** 2 + (ys - 75) ** 2 >= 44 ** 2) & ((xs - 80) ** 2 + (ys - 75) ** 2 < 45 ** 2) & (ys >= 60)
    image[rim] = (image[rim] + (90, 140, 200)) / 2                     # anti-aliased outline: skin + background
    image = np.clip(image + np.random.default_rng(0).normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    gated = M.head_labels(prob, lm, prob.shape, hair_region=True, image=image)
    plain = M.head_labels(prob, lm, prob.shape, hair_region=True)
    hair = (prob > 0) & (ys < 55) & ~(plain == M.FACE)
    assert (gated[hair] == M.HEAD_OTHER).mean() > 0.95                # hair pulls
    assert gated[80, 40] == M.IGNORE and plain[80, 40] == M.HEAD_OTHER   # skin beside the face: ignored
    assert gated[80, 120] == M.IGNORE                                  # skin in shadow too
    assert not (gated[rim] == M.HEAD_OTHER).any()                      # no rim along the outline
    for lab in (M.FACE, M.MOUTH, M.BACKGROUND):                        # the rest is as without the frame
        assert np.array_equal(gated == lab, plain == lab)


def test_hair_edge_is_the_outline_of_the_hair_on_the_head():
    """The band the identity rays sample on a model with hair: hair and background within HAIR_EDGE_WIDTH face sizes
    of each other, on both sides of the outline; a hair-labelled blob away from the face (background the person mask
    took in) and a small one beside it (a dark ear) have none, and without hair there is none at all."""
    H, W, size = 200, 160, 100.0
    ys, xs = np.mgrid[0:H, 0:W]
    r = np.hypot(xs - 80, ys - 75)
    lab = np.full((H, W), M.BACKGROUND, np.uint8)
    lab[(r < 45) & (ys < 70)] = M.HEAD_OTHER                              # a head of hair above the face
    lab[((xs - 80) / 25) ** 2 + ((ys - 85) / 32) ** 2 < 1] = M.FACE
    ear = (np.abs(xs - 110) < 3) & (np.abs(ys - 95) < 6)
    lab[ear] = M.HEAD_OTHER                                               # a dark ear touching the face
    lab[(xs - 140) ** 2 + (ys - 20) ** 2 < 10 ** 2] = M.HEAD_OTHER        # a blob the person mask took in
    edge = M.hair_edge(lab, size)
    width = M.HAIR_EDGE_WIDTH * size
    top = (ys < 50) & (np.abs(xs - 80) < 20)
    assert edge[top & (r > 45 - width + 1) & (r < 45)].all()              # hair side of the outline
    assert edge[top & (r > 45) & (r < 45 + width - 1)].all()              # background side
    assert not edge[top & ((r < 45 - width - 1) | (r > 45 + width + 1))].any()   # nothing away from it
    assert not edge[:40, 120:].any()                                      # the blob has none
    assert not edge[85:106, 105:116].any()                                # nor the ear
    lab[lab == M.HEAD_OTHER] = M.IGNORE
    assert not M.hair_edge(lab, size).any()                               # no hair: no band


def test_a_beard_darkens_the_lower_face():
    """The tracker's beard gate: the lower face (below the nose, lips out) is skin-coloured like the face above it on a
    shaven face, even in a soft shadow, and mostly not under a dark beard."""
    lm, prob = _face()
    lm[M.NOSE_BOTTOM] = (80, 88)
    H, W = prob.shape
    ys, xs = np.mgrid[0:H, 0:W]
    rng = np.random.default_rng(0)
    image = np.empty((H, W, 3), np.float32)
    image[:] = (205, 150, 120)
    image[ys > 95] *= 0.7                                                # a shadow under the mouth
    shaven = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    beard = image.copy()
    beard[ys > 90] = (55, 45, 40)
    beard = np.clip(beard + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    assert M.lower_face_skin_share(shaven, lm) > 0.85
    assert M.lower_face_skin_share(beard, lm) < 0.3


def test_background_the_person_mask_took_in_beside_the_hair_is_ignored():
    """Selfie segmentation takes in patches of a cluttered background next to the hair (long hair, synthetic clip
    hair000: a fifth of the pixels near the head). Only pixels coloured like the hair just outside the upper face
    pull the surface out; the hair's colour is not taken from beside the lower face (a collar there), and hair
    brighter or darker than at the hairline (shading, highlights) still pulls."""
    lm, prob = _face()
    lm[M.EYES_MIDDLE] = (80, 72)
    H, W = prob.shape
    ys, xs = np.mgrid[0:H, 0:W]
    disc = prob > 0
    patch = ((xs - 125) ** 2 + (ys - 35) ** 2 < 22 ** 2) & ~disc        # background the person mask took in
    collar = (ys >= 100) & (ys < 118) & (np.abs(xs - 80) > 22) & (np.abs(xs - 80) < 45) & ~disc
    prob = np.maximum(prob, (patch | collar).astype(np.float32))
    skin = np.array([205, 150, 120], np.float32)
    image = np.empty((H, W, 3), np.float32)
    image[:] = (90, 140, 200)
    image[disc] = skin
    hair = disc & (ys < 60)
    image[hair] = (60, 55, 50)                                          # dark hair on top of the head
    image[hair & (ys < 40)] = (120, 110, 100)                           # a highlight: brighter, the same hue
    image[patch] = (190, 120, 60)                                       # orange fur in the background
    image[collar] = (40, 60, 140)                                       # a blue collar beside the lower face
    image = np.clip(image + np.random.default_rng(0).normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    lab = M.head_labels(prob, lm, prob.shape, hair_region=True, image=image)
    plain = M.head_labels(prob, lm, prob.shape, hair_region=True)
    assert (plain[patch] == M.HEAD_OTHER).mean() > 0.9 and (plain[collar] == M.HEAD_OTHER).mean() > 0.9
    inner = hair & ~(plain == M.FACE) & (ys > 33)                       # off the outline's thin rim
    assert (lab[inner] == M.HEAD_OTHER).mean() > 0.95                   # hair pulls, highlight included
    assert (lab[hair & (ys < 40) & (ys > 33)] == M.HEAD_OTHER).mean() > 0.95
    assert not (lab[patch] == M.HEAD_OTHER).any()                       # the fur does not
    assert not (lab[collar] == M.HEAD_OTHER).any()                      # nor the collar
    assert (lab[patch] == M.IGNORE).all()                               # ignored, not background: no push in
    # a bald head: no hair beside the upper face to tell its colour, so nothing is dropped for colour
    bald = image.copy()
    bald[hair] = skin.astype(np.uint8)
    lab_bald = M.head_labels(prob, lm, prob.shape, hair_region=True, image=bald)
    assert (lab_bald[patch] == M.HEAD_OTHER).mean() > 0.9
