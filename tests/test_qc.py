"""Temporal-consistency scores (t2vz_core.qc) and `t2vz qc`, on real H.264 files made here.

The source is a real photograph (skimage's astronaut) seen through a window that pans over it,
so the optical flow has real texture to follow; edits are derived from it frame by frame.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from review_fixtures import encode, panned_astronaut

from flows.cli import main
from t2vz_core import qc
from t2vz_core.errors import InputError
from t2vz_core.media import FrameStore

FRAMES = 16


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qc")
    src = panned_astronaut()
    rng = np.random.default_rng(0)
    jumps = np.array([0, 30] * (FRAMES // 2))[:, None, None, None]
    variants = {
        "source": src,
        # a consistent recolour: channels swapped and inverted, the same way in every frame
        "recoloured": 255 - src[..., ::-1],
        "noisy": np.clip(src + rng.normal(0, 12, src.shape), 0, 255).astype(np.uint8),
        "jumpy": np.clip(src.astype(int) + jumps, 0, 255).astype(np.uint8),
    }
    return {name: encode(frames, folder / f"{name}.mp4") for name, frames in variants.items()}


def run_qc_json(capsys, *argv) -> dict:
    assert main(["qc", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_source_against_itself_scores_one(clips, capsys):
    scores = run_qc_json(capsys, clips["source"], "--source", clips["source"])
    assert list(scores) == list(qc.QC_KEYS)  # exactly the sidecar's qc object
    assert scores["warp_error_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert scores["warp_error"] == scores["source_warp_error"] > 0
    assert scores["flicker"] == scores["source_flicker"]


def test_consistent_recolour_scores_near_one(clips, capsys):
    scores = run_qc_json(capsys, clips["recoloured"], "--source", clips["source"])
    assert 0.85 < scores["warp_error_ratio"] < 1.2


def test_independent_noise_scores_clearly_higher(clips, capsys):
    scores = run_qc_json(capsys, clips["noisy"], "--source", clips["source"])
    assert scores["warp_error_ratio"] > 3


def test_brightness_jumps_raise_the_ratio_and_the_flicker(clips, capsys):
    scores = run_qc_json(capsys, clips["jumpy"], "--source", clips["source"])
    assert scores["warp_error_ratio"] > 5
    assert scores["flicker"] > 20 > 5 * scores["source_flicker"]


def test_without_source_the_flow_comes_from_the_output(clips):
    alone = qc.score_videos(clips["noisy"])
    against = qc.score_videos(clips["noisy"], clips["source"])
    assert alone.flow_from == "output" and against.flow_from == "source"
    assert alone.source_warp_error is alone.warp_error_ratio is alone.source_flicker is None
    assert alone.warp_error > 0 and alone.flicker == pytest.approx(against.flicker)
    # a clean video scored alone is its own source: the same flow, the same frames
    clean = qc.score_videos(clips["source"], clips["source"])
    assert qc.score_videos(clips["source"]).warp_error == pytest.approx(clean.source_warp_error)
    # the noisy edit's own flow chases its noise: the score differs from the source-flow one
    assert alone.warp_error != pytest.approx(against.warp_error, rel=0.01)


def test_readable_table_without_json(clips, capsys):
    assert main(["qc", clips["jumpy"], "--source", clips["source"]]) == 0
    out = capsys.readouterr().out
    assert "warp error ratio" in out and "flicker (source)" in out and "15 frame pairs" in out


def test_chunk_size_does_not_change_the_scores(clips):
    base = qc.score_videos(clips["noisy"], clips["source"], chunk_size=16)
    for chunk_size in (1, 5):
        assert qc.score_videos(clips["noisy"], clips["source"], chunk_size=chunk_size) == base


def test_frame_stores_score_like_the_videos(clips, tmp_path):
    """The qc step's path: FrameStores of the output and its decoded source."""
    from t2vz_core.media import iter_frames, plan_decode, probe

    stores = {}
    for name in ("source", "noisy"):
        with FrameStore.writer(tmp_path / name, 8) as writer:
            start = 0
            for chunk in iter_frames(clips[name], plan_decode(probe(clips[name])), backend="pyav"):
                writer.write(start, chunk)
                start += len(chunk)
        stores[name] = FrameStore(tmp_path / name)
    assert qc.score_stores(stores["noisy"], stores["source"]) == qc.score_videos(clips["noisy"], clips["source"])
    assert qc.score_stores(stores["noisy"]).flow_from == "output"


def test_frames_are_streamed_lazily():
    """score_frames never holds more than a chunk: it pulls the next chunk only when it needs it."""
    frames = panned_astronaut(frames=12)
    pulled = []

    def chunks(name):
        for start in range(0, len(frames), 3):
            pulled.append((name, start))
            yield frames[start : start + 3]

    qc.score_frames(chunks("out"), chunks("src"))
    # the two streams are read in lock step, chunk by chunk
    assert pulled[:4] == [("out", 0), ("src", 0), ("out", 3), ("src", 3)]


def test_a_static_source_floors_the_ratio_at_one():
    still = np.repeat(panned_astronaut(frames=1), 6, axis=0)
    scores = qc.score_frames([still], [still])
    assert scores.source_warp_error < 1
    assert scores.warp_error_ratio == pytest.approx(scores.warp_error)  # divided by max(source, 1)


def test_one_frame_has_no_scores():
    one = panned_astronaut(frames=1)
    assert qc.score_frames([one], [one]).to_dict() == dict.fromkeys(qc.QC_KEYS)


def test_mismatched_frame_counts_are_named():
    frames = panned_astronaut(frames=6)
    with pytest.raises(InputError, match="source ends after 4 frames"):
        qc.score_frames([frames], [frames[:4]])
    with pytest.raises(InputError, match="more frames than the output"):
        qc.score_frames([frames[:4]], [frames])
    with pytest.raises(InputError, match="uint8"):
        qc.score_frames([frames.astype(np.float32)])


def test_cli_rejects_a_short_source_and_a_missing_file(clips, tmp_path, capsys):
    short = encode(panned_astronaut(frames=6), tmp_path / "short.mp4")
    assert main(["qc", clips["source"], "--source", short]) == 2
    assert "shorter than the edit" in capsys.readouterr().err
    assert main(["qc", str(tmp_path / "nope.mp4")]) == 2
    assert "no such file" in capsys.readouterr().err
