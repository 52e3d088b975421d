"""plan_decode(): frames chosen by real timestamps with exact rationals; sizes keep aspect."""

from fractions import Fraction
from pathlib import Path

import pytest

from t2vz_core.errors import InputError
from t2vz_core.media import DecodeSpec, VideoInfo, plan_decode
from t2vz_core.media.synthetic import vfr_timestamps


def info_for(pts, time_base, fps, width=1920, height=1080, rotation=0, is_vfr=False, duration=None):
    pts = tuple(pts)
    if duration is None:
        duration = float(len(pts) / Fraction(fps))
    return VideoInfo(
        path=Path("clip.mp4"),
        fps=Fraction(fps),
        frame_count=len(pts),
        duration=duration,
        width=width,
        height=height,
        rotation=rotation,
        has_audio=False,
        codec="h264",
        is_vfr=is_vfr,
        time_base=Fraction(time_base),
        pts=pts,
    )


def cfr(n, fps, time_base=None):
    fps = Fraction(fps)
    tb = time_base or 1 / fps
    return info_for([round(i / fps / tb) for i in range(n)], tb, fps)


def test_60_to_15_picks_every_fourth_frame():
    plan = plan_decode(cfr(120, 60), DecodeSpec(fps=15))
    assert plan.indices == tuple(range(0, 120, 4))
    assert plan.fps == 15 and plan.duration == pytest.approx(2.0)


@pytest.mark.parametrize("time_base", [Fraction(1001, 30000), Fraction(1, 90000), Fraction(1, 1000)])
def test_ntsc_source_rate_is_kept_exactly(time_base):
    # 1/1000 is WebM's clock: 29.97 fps timestamps there are rounded to whole milliseconds
    plan = plan_decode(cfr(300, Fraction(30000, 1001), time_base))
    assert plan.fps == Fraction(30000, 1001)  # not int(29.97) == 29 as in the research code
    assert plan.indices == tuple(range(300))


def test_float_and_text_rates_become_exact_fractions():
    info = cfr(300, Fraction(30000, 1001))
    assert plan_decode(info, DecodeSpec(fps=29.97)).fps == Fraction(30000, 1001)
    assert plan_decode(info, DecodeSpec(fps="24000/1001")).fps == Fraction(24000, 1001)


def test_upsampling_repeats_frames():
    assert plan_decode(cfr(4, 30), DecodeSpec(fps=60)).indices == (0, 0, 1, 1, 2, 2, 3, 3)


def test_ntsc_to_24_follows_the_clock():
    info = cfr(200, Fraction(30000, 1001))
    plan = plan_decode(info, DecodeSpec(fps=24))
    # brute force with exact arithmetic: the frame on screen at k/24 s
    expected = [
        max(i for i in range(200) if Fraction(i * 1001, 30000) <= Fraction(k, 24)) for k in range(len(plan.indices))
    ]
    assert list(plan.indices) == expected
    assert len(plan) == int(Fraction(200 * 1001, 30000) * 24) + 1


def test_time_range_and_max_frames():
    plan = plan_decode(cfr(300, 30), DecodeSpec(start=1.0, end=2.0))
    assert plan.indices == tuple(range(30, 60)) and plan.start == 1.0
    assert plan.timestamps[0] == pytest.approx(1.0)
    assert plan_decode(cfr(300, 30), DecodeSpec(start=1.0, max_frames=5)).indices == (30, 31, 32, 33, 34)


def test_variable_rate_uses_real_timestamps():
    stamps = vfr_timestamps(30)
    info = info_for(
        [round(t * 90000) for t in stamps],
        Fraction(1, 90000),
        30,
        is_vfr=True,
        duration=float(stamps[-1] + Fraction(1, 10)),
    )
    plan = plan_decode(info)
    expected = [max(i for i, t in enumerate(stamps) if t <= Fraction(k, 30)) for k in range(len(plan.indices))]
    assert list(plan.indices) == expected
    assert len(plan) > len(stamps)  # slow parts repeat frames: constant rate, no drift


@pytest.mark.parametrize(
    "src,rotation,spec,out",
    [
        ((1920, 1080), 0, DecodeSpec(resolution=512), (512, 288)),  # not 512x256 as in the original
        ((1080, 1920), 0, DecodeSpec(resolution=512), (288, 512)),
        ((640, 480), 0, DecodeSpec(width=320), (320, 240)),
        ((640, 480), 0, DecodeSpec(height=240), (320, 240)),
        ((1000, 1000), 0, DecodeSpec(width=512, height=256), (256, 256)),  # keep: fits in the box
        ((33, 17), 0, DecodeSpec(resolution=64), (64, 32)),
        ((1920, 1080), 0, DecodeSpec(), (1920, 1080)),
    ],
)
def test_sizes_keep_aspect_in_multiples_of_8(src, rotation, spec, out):
    plan = plan_decode(info_for(range(3), Fraction(1, 30), 30, *src, rotation=rotation), spec)
    assert (plan.width, plan.height) == out
    assert plan.width % 8 == 0 or spec == DecodeSpec()


def test_rotated_source_plans_upright_size():
    info = info_for(range(3), Fraction(1, 30), 30, width=1080, height=1920, rotation=90)
    plan = plan_decode(info, DecodeSpec(resolution=512))
    assert (plan.width, plan.height) == (288, 512)
    assert plan.geometry.rotation == 90 and plan.geometry.resize == (288, 512)


def test_crop_and_pad_give_exact_sizes():
    info = info_for(range(3), Fraction(1, 30), 30, 1920, 1080)
    crop = plan_decode(info, DecodeSpec(width=512, height=512, fit="crop"))
    assert (crop.width, crop.height) == (512, 512)
    assert crop.geometry.resize == (910, 512) and crop.geometry.crop == (199, 0, 512, 512)
    pad = plan_decode(info, DecodeSpec(width=512, height=512, fit="pad"))
    assert pad.geometry.resize == (512, 288) and pad.geometry.pad == (0, 112, 0, 112)


@pytest.mark.parametrize(
    "spec,words",
    [
        (DecodeSpec(start=20.0), "start"),
        (DecodeSpec(start=-1.0), "start"),
        (DecodeSpec(start=2.0, end=1.0), "end"),
        (DecodeSpec(fps=0), "fps"),
        (DecodeSpec(fps="abc"), "fps"),
        (DecodeSpec(max_frames=0), "max_frames"),
        (DecodeSpec(width=100), "multiple of 8"),
        (DecodeSpec(resolution=100000), "resolution"),
        (DecodeSpec(width=64, fit="crop"), "needs both width and height"),
        (DecodeSpec(resolution=512, width=512), "not both"),
        (DecodeSpec(fit="stretch"), "fit"),
    ],
)
def test_bad_specs_raise_input_error_naming_the_parameter(spec, words):
    with pytest.raises(InputError, match=words):
        plan_decode(cfr(300, 30), spec)
