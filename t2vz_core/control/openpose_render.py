"""Draw body keypoints the way openpose ControlNets were trained to read them.

The OpenPose-18 (COCO) body: 0 nose, 1 neck, 2-4 right shoulder/elbow/wrist, 5-7 left
shoulder/elbow/wrist, 8-10 right hip/knee/ankle, 11-13 left hip/knee/ankle, 14/15 right/left
eye, 16/17 right/left ear ("right" = the person's right). Limbs are filled ellipses 4 px
thick in 60 % of their colour, joints discs of radius 4 in full colour, on black, colours
in RGB order: the convention of the ControlNet annotator (and controlnet-aux), which the
openpose ControlNets were trained on.
"""

from __future__ import annotations

import math

import numpy as np

# Limb (joint a, joint b); the i-th limb uses the i-th colour.
LIMBS = [
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
]
COLOURS = [
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 170),
    (255, 0, 85),
]
LIMB_SHADE = 0.6
STICK_WIDTH = 4
JOINT_RADIUS = 4


def limb_colour(i: int) -> tuple[int, int, int]:
    return tuple(int(c * LIMB_SHADE) for c in COLOURS[i])


def render_openpose(people: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """people: arrays (18, 2) of normalised (x, y) in [0, 1], NaN where a joint is unseen."""
    import cv2

    canvas = np.zeros((height, width, 3), np.uint8)
    for points in people:
        px = np.asarray(points, np.float64) * (width, height)
        seen = ~np.isnan(px).any(axis=1)
        for i, (a, b) in enumerate(LIMBS):
            if not (seen[a] and seen[b]):
                continue
            (xa, ya), (xb, yb) = px[a], px[b]
            length = math.hypot(xa - xb, ya - yb)
            angle = math.degrees(math.atan2(ya - yb, xa - xb))
            centre = (int((xa + xb) / 2), int((ya + yb) / 2))
            polygon = cv2.ellipse2Poly(centre, (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, limb_colour(i))
        for j in np.flatnonzero(seen):
            cv2.circle(canvas, (int(px[j, 0]), int(px[j, 1])), JOINT_RADIUS, COLOURS[j], thickness=-1)
    return canvas
