"""Canny and depth maps, map stores reused by parameters, and given control videos."""

import json

import cv2
import numpy as np
import pytest
from skimage import data

from t2vz_core.control import (
    control_maps_to_store,
    control_params,
    extract_control_maps,
)
from t2vz_core.errors import InputError
from t2vz_core.media import DecodeSpec, decode_to_store, plan_decode, probe
from t2vz_core.media.synthetic import make_video


def test_canny_thresholds():
    photo = data.astronaut()[None]
    loose = next(extract_control_maps("canny", photo, {"low_threshold": 50, "high_threshold": 100}))
    strict = next(extract_control_maps("canny", photo, {"low_threshold": 200, "high_threshold": 300}))
    assert loose.shape == photo.shape and set(np.unique(loose)) == {0, 255}
    assert (loose[..., 0] == loose[..., 2]).all()
    assert np.array_equal(loose[0, ..., 0], cv2.Canny(photo[0], 50, 100))
    assert (strict > 0).sum() < 0.6 * (loose > 0).sum()
    assert next(extract_control_maps("canny", np.zeros((1, 32, 32, 3), np.uint8))).max() == 0


@pytest.mark.parametrize(
    "params,backend,words",
    [
        ({"low_threshold": 300, "high_threshold": 200}, None, "must be smaller than high_threshold"),
        ({"low_threshold": 150, "high_threshold": 150}, None, "must be smaller than high_threshold"),  # as the manifest
        ({"low": 1}, None, "unknown parameter"),
        ({}, "sobel", "backend"),
    ],
)
def test_bad_canny_parameters(params, backend, words):
    with pytest.raises(InputError, match=words):
        extract_control_maps("canny", np.zeros((1, 8, 8, 3), np.uint8), params, backend=backend)
    with pytest.raises(InputError, match="control kind"):
        control_params("normals")


@pytest.mark.parametrize("backend,weights", [("midas", "dpt_hybrid-midas-501f0c75.pt"), ("zoe", "ZoeD_M12_N.pt")])
def test_depth_without_weights_is_a_clear_input_error(tmp_path, backend, weights):
    frame = np.zeros((1, 64, 64, 3), np.uint8)
    with pytest.raises(InputError, match=f"depth backend '{backend}'.*{weights}.*from https://huggingface"):
        extract_control_maps("depth", frame, {"annotator": str(tmp_path)}, backend=backend)
    with pytest.raises(InputError, match=f"cannot get {weights} from hub repo"):
        extract_control_maps("depth", frame, backend=backend)
    with pytest.raises(InputError, match="does not exist"):
        extract_control_maps("depth", frame, {"annotator": str(tmp_path / "nope")}, backend=backend)


@pytest.fixture(scope="module")
def person_frames(tmp_path_factory):
    """A short clip of a real photo of a person panning, decoded into a FrameStore."""
    d = tmp_path_factory.mktemp("maps")
    video = make_video(d / "person.mp4", frames=4, size=(256, 256), pattern="image", image=data.astronaut())
    plan = plan_decode(probe(video), DecodeSpec(resolution=256))
    return d, decode_to_store(video, plan, d / "frames", backend="pyav")


def test_map_stores_are_written_losslessly_and_reused(person_frames):
    d, frames = person_frames
    store = control_maps_to_store("pose", frames, d / "pose")
    assert len(store) == 4 and store.fps == frames.fps
    assert all(store[i].any() for i in range(4))  # a skeleton in every frame
    meta = json.loads((d / "pose" / "meta.json").read_text())
    assert meta["params"]["backend"] == "mediapipe"
    assert meta["params"]["params"] == {"min_detection_confidence": 0.5, "min_visibility": 0.5}
    assert meta["params"]["source"] == frames.params
    stamp = store.frame_path(0).stat().st_mtime_ns
    again = control_maps_to_store("pose", frames, d / "pose")
    assert again.frame_path(0).stat().st_mtime_ns == stamp  # reused, not recomputed
    edges = control_maps_to_store("canny", frames, d / "canny", {"low_threshold": 10})
    expected = next(extract_control_maps("canny", frames[:4], {"low_threshold": 10}))
    assert np.array_equal(edges[:], expected)  # PNG is lossless
    redone = control_maps_to_store("canny", frames, d / "canny", {"low_threshold": 150})
    assert redone.params["params"]["low_threshold"] == 150
    assert (redone[:] > 0).sum() < (expected > 0).sum()
