"""Pose maps from raw photos of people, offline (mediapipe), in the OpenPose convention."""

import importlib.util
import sys
import types
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from skimage import data

from t2vz_core.control import extract_control_maps, render_openpose
from t2vz_core.control.openpose_render import COLOURS, limb_colour
from t2vz_core.control.pose import MediapipePose
from t2vz_core.errors import InputError


def has_colour(image, colour, min_pixels=5):
    return int(np.all(image == np.array(colour, np.uint8), axis=-1).sum()) >= min_pixels


def test_astronaut_gets_an_openpose_skeleton():
    photo = data.astronaut()  # a real photograph of a person, 512x512
    pose_map = next(extract_control_maps("pose", photo[None]))[0]
    assert pose_map.shape == photo.shape and pose_map.dtype == np.uint8
    points = MediapipePose().keypoints(photo)[0]
    seen = ~np.isnan(points).any(axis=1)
    # head and shoulders are in the picture (hips and legs are not)
    assert seen[[0, 1, 2, 5, 14, 15]].all() and not seen[[10, 13]].any()
    assert points[2, 0] < points[5, 0]  # her right shoulder is on the image's left
    assert has_colour(pose_map, COLOURS[0]) and has_colour(pose_map, COLOURS[1])  # nose, neck
    assert has_colour(pose_map, limb_colour(0))  # neck -> right shoulder, 60 % red
    assert has_colour(pose_map, limb_colour(12))  # neck -> nose, 60 % blue
    lit = pose_map.any(axis=-1)
    assert 0.002 < lit.mean() < 0.2
    ys = np.nonzero(lit)[0]
    assert ys.min() < 0.3 * 512  # the skeleton reaches the head
    camera = np.repeat(data.camera()[:, :, None], 3, axis=2)  # the cameraman: also found
    assert next(extract_control_maps("pose", camera[None]))[0].any()


def test_no_person_gives_an_empty_map():
    blank = np.zeros((2, 256, 320, 3), np.uint8)
    maps = next(extract_control_maps("pose", blank))
    assert maps.shape == (2, 256, 320, 3) and maps.max() == 0
    noise = np.random.default_rng(0).integers(0, 30, (1, 128, 128, 3), np.uint8)
    assert next(extract_control_maps("pose", noise)).max() == 0


def _controlnet_aux_draw_bodypose():
    """controlnet-aux's own drawing function, loaded without importing controlnet_aux (its
    package import takes ~14 s): the oracle for our renderer."""
    spec = importlib.util.find_spec("controlnet_aux")
    util_path = Path(spec.origin).parent / "open_pose" / "util.py"

    class Keypoint(NamedTuple):
        x: float
        y: float
        score: float = 1.0
        id: int = -1

    package = types.ModuleType("_cnaux_oracle")
    package.__path__ = []
    body = types.ModuleType("_cnaux_oracle.body")
    body.Keypoint, body.BodyResult = Keypoint, NamedTuple("BodyResult", [("keypoints", list)])
    sys.modules.update({"_cnaux_oracle": package, "_cnaux_oracle.body": body})
    util_spec = importlib.util.spec_from_file_location("_cnaux_oracle.util", util_path)
    util = importlib.util.module_from_spec(util_spec)
    util_spec.loader.exec_module(util)
    return util.draw_bodypose, Keypoint


def test_renderer_matches_controlnet_aux_pixel_for_pixel():
    draw_bodypose, Keypoint = _controlnet_aux_draw_bodypose()
    rng = np.random.default_rng(3)
    for trial in range(5):
        points = rng.uniform(0.05, 0.95, (18, 2))
        points[rng.random(18) < 0.2] = np.nan
        ours = render_openpose([points], 240, 320)
        keypoints = [None if np.isnan(p).any() else Keypoint(*p) for p in points]
        theirs = draw_bodypose(np.zeros((240, 320, 3), np.uint8), keypoints)
        assert np.array_equal(ours, theirs), f"trial {trial}"


def test_pose_backends_needing_weights_say_what_to_download(tmp_path):
    photo = data.astronaut()[None]
    with pytest.raises(InputError, match="body_pose_model.pth.*huggingface.co/lllyasviel/Annotators"):
        extract_control_maps("pose", photo, {"annotator": str(tmp_path)}, backend="openpose")
    with pytest.raises(InputError, match="hub repo lllyasviel/Annotators.*pass that folder"):
        extract_control_maps("pose", photo, backend="openpose")  # the tests run offline
    with pytest.raises(InputError, match="dwpose.*mmpose"):
        extract_control_maps("pose", photo, backend="dwpose")
    with pytest.raises(InputError, match="min_visibility"):
        extract_control_maps("pose", photo, {"min_visibility": 2})
    with pytest.raises(InputError, match="unknown parameter.*hands"):
        extract_control_maps("pose", photo, {"hands": True})
