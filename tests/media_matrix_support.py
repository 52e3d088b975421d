"""The media matrix: source files of every common kind, made with PyAV, and the checks
every output must pass (tests/test_media_matrix.py).

Sources are small (64-96 px, ~1.5 s). Video frames carry t2vz_core.media.synthetic's barcode, so an
output frame says which source frame it shows; audio is band-limited noise, the same on
every channel, so a cross-correlation against the source finds one sharp peak, at lag 0
when the output's audio is the source's trimmed window.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from t2vz_core.media.synthetic import frame_image, read_frame_index

ANALYSIS_RATE = 16000  # both sides are resampled to this before comparing
SECONDS = 1.6
TRIM = (0.23, 1.31)  # s; inside audio packets at every rate and codec here
MAX_LAG_S = 0.02  # the correlation looks this far either side of lag 0


@dataclass(frozen=True)
class AudioCase:
    codec: str = "aac"  # aac, mp3, opus, vorbis, flac, pcm_s16le
    layout: str = "stereo"  # mono, stereo, 5.1
    rate: int = 48000
    offset: float = 0.0  # the audio starts this long after the video
    seconds: float | None = None  # audio length; None: as long as the video

    @property
    def id(self) -> str:
        text = f"{self.codec}-{self.layout}-{self.rate // 1000 if self.rate % 1000 == 0 else self.rate / 1000:g}k"
        if self.offset:
            text += f"-late{self.offset:g}s"
        if self.seconds is not None:
            text += f"-{self.seconds:g}s"
        return text


@dataclass(frozen=True)
class VideoCase:
    name: str
    encoder: str = "libx264"
    pix_fmt: str = "yuv420p"
    suffix: str = ".mp4"
    size: tuple[int, int] = (64, 48)  # display size, upright
    fps: Fraction = Fraction(24)
    rotation: int = 0  # clockwise degrees a player turns the coded frames
    sar: Fraction = Fraction(1)  # sample (pixel) aspect ratio of the coded frames
    vfr: bool = False
    options: tuple[tuple[str, str], ...] = ()

    @property
    def coded_size(self) -> tuple[int, int]:
        w, h = self.size
        w = round(w / self.sar)
        return (h, w) if self.rotation in (90, 270) else (w, h)


VP9_FAST = (("deadline", "realtime"), ("cpu-used", "8"), ("crf", "20"), ("b", "0"))

# Where each audio codec lives in the wild (and what PyAV muxes it into).
AUDIO_CONTAINER = {"aac": ".mp4", "mp3": ".mp4", "opus": ".webm", "vorbis": ".mkv", "flac": ".mkv", "pcm_s16le": ".mov"}
_AUDIO_ENCODER = {
    "aac": "aac",
    "mp3": "libmp3lame",
    "opus": "libopus",
    "vorbis": "vorbis",
    "flac": "flac",
    "pcm_s16le": "pcm_s16le",
}


def audio_source_video(case: AudioCase) -> VideoCase:
    """The video next to each audio codec: VP9 in WebM, H.264 elsewhere."""
    if AUDIO_CONTAINER[case.codec] == ".webm":
        return VideoCase("vp9", "libvpx-vp9", suffix=".webm", options=VP9_FAST)
    return VideoCase("h264", suffix=AUDIO_CONTAINER[case.codec])


def audio_unwritable(case: AudioCase) -> str | None:
    """Why the pinned PyAV (FFmpeg's own encoders) cannot make this source, or None."""
    if case.codec == "opus" and case.rate != 48000:
        return "Opus has no 22.05/44.1 kHz mode: every Opus file in the wild decodes at 48 kHz"
    if case.codec == "mp3" and case.layout == "5.1":
        return "MP3 holds at most two channels"
    if case.codec == "vorbis" and case.layout != "stereo":
        return "FFmpeg's native Vorbis encoder writes stereo only (no libvorbis in PyAV)"
    return None


def signal(n: int, rate: int, seed: int = 7) -> np.ndarray:
    """Band-limited (150 Hz - 3 kHz) noise at `rate`, peak 0.5: survives every codec here."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum[(freqs < 150) | (freqs > 3000)] = 0
    out = np.fft.irfft(spectrum, n)
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def make_source(path: str | os.PathLike, video: VideoCase, audio: AudioCase | None) -> Path:
    """Write one source file: `video` with the barcode, `audio` as band-limited noise."""
    import av
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tb = Fraction(1, 90000) if video.vfr else 1 / video.fps
    times = _frame_times(video)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(video.encoder, rate=video.fps)
        stream.width, stream.height = video.coded_size
        stream.pix_fmt = video.pix_fmt
        stream.codec_context.time_base = tb
        stream.codec_context.gop_size = 12
        stream.options = dict(video.options)
        if video.sar != 1:
            stream.codec_context.sample_aspect_ratio = video.sar
        if video.rotation:
            stream.set_display_rotation(-video.rotation)  # the matrix turns counter-clockwise
        astream = _add_audio(out, audio) if audio is not None else None
        for i, t in enumerate(times):
            img = frame_image(i, video.size)
            if video.sar != 1:  # store squeezed pixels that a player stretches back
                w, h = video.size
                img = cv2.resize(img, (round(w / video.sar), h), interpolation=cv2.INTER_AREA)
            if video.rotation:
                img = np.ascontiguousarray(np.rot90(img, k=video.rotation // 90))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = round(t / tb)
            frame.time_base = tb
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if astream is not None:
            _write_audio(out, astream, audio, float(times[-1] + 1 / video.fps))
    return path


def _frame_times(video: VideoCase) -> list[Fraction]:
    count = int(SECONDS * video.fps)
    if not video.vfr:
        return [i / video.fps for i in range(count)]
    # blocks of 4 frames at the full rate and 4 at a third of it: a phone's variable rate
    out, t = [], Fraction(0)
    while t < SECONDS:
        out.append(t)
        t += (1 if (len(out) // 4) % 2 == 0 else 3) / video.fps
    return out


def _add_audio(out, audio: AudioCase):
    stream = out.add_stream(_AUDIO_ENCODER[audio.codec], rate=audio.rate)
    stream.layout = audio.layout
    if audio.codec == "vorbis":
        stream.codec_context.options = {"strict": "experimental"}
    return stream


def _write_audio(out, stream, audio: AudioCase, video_seconds: float) -> None:
    import av

    seconds = audio.seconds if audio.seconds is not None else video_seconds - audio.offset
    total = int(round(seconds * audio.rate))
    mono = signal(total, audio.rate)
    channels = stream.layout.nb_channels
    start = int(round(audio.offset * audio.rate))
    step = 1000  # not a codec frame size: PyAV re-frames for the encoder
    for i in range(0, total, step):
        chunk = np.repeat(mono[None, i : i + step], channels, axis=0)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=audio.layout)
        frame.sample_rate = audio.rate
        frame.pts = start + i
        frame.time_base = Fraction(1, audio.rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


# --- reading outputs back --------------------------------------------------------------


@dataclass
class DecodedAudio:
    samples: np.ndarray  # mono, ANALYSIS_RATE, sample 0 at time 0 (zeros where no audio)
    first: float  # s, time of the first decoded sample
    end: float  # s, end of the last decoded sample
    frame: float  # s, the longest packet: "one audio frame" of this file
    tick: float  # s, the container clock's tick where coarser than one sample, else 0


def decode_audio(path: str | os.PathLike, origin: float = 0.0) -> DecodedAudio | None:
    """The first audio track, mixed to mono, placed by its timestamps and resampled to
    ANALYSIS_RATE (zero-phase, so nothing moves); times are relative to `origin`
    (container time, s). None when there is no audio."""
    import av
    from scipy.signal import resample_poly

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        rate, tb = stream.rate, stream.time_base
        pieces, longest = [], 0.0
        for packet in container.demux(stream):
            if packet.duration and packet.time_base:
                longest = max(longest, float(packet.duration * packet.time_base))
            for frame in packet.decode():
                pieces.append((round(frame.pts * frame.time_base * rate), _mono(frame)))
    # A coarse clock (Matroska's milliseconds) stamps back-to-back frames up to half a
    # tick off: frames that follow each other to within a tick form a run, laid end to
    # end at the run's median offset. A larger jump is a real gap.
    tick = max(1, int(np.ceil(float(tb) * rate)))
    runs: list[list] = []  # each a list of (stamp, samples before it in the run, data)
    expected = None  # the stamp of a frame that follows the previous one back to back
    for at, data in pieces:
        at -= round(origin * rate)
        if runs and abs(at - expected) <= tick:
            _, before, previous = runs[-1][-1]
            runs[-1].append((at, before + len(previous), data))
        else:
            runs.append([(at, 0, data)])
        expected = at + len(data)
    placed = []
    for run in runs:
        offset = int(round(np.median([at - before for at, before, _ in run])))
        placed += [(offset + before, data) for _, before, data in run]
    first, end = placed[0][0], max(at + len(data) for at, data in placed)
    timeline = np.zeros(max(end, 0))
    for at, data in placed:
        lo = max(0, -at)
        timeline[at + lo : at + len(data)] = data[lo:]
    ratio = Fraction(ANALYSIS_RATE, rate)
    samples = resample_poly(timeline, ratio.numerator, ratio.denominator).astype(np.float32)
    clock = float(tb) if tb > Fraction(1, rate) else 0.0
    return DecodedAudio(samples, first / rate, end / rate, longest, clock)


def _mono(frame) -> np.ndarray:
    """One decoded frame as float samples in [-1, 1], channels averaged."""
    data = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:  # packed: (1, samples * channels), interleaved
        data = data.reshape(-1, channels).T
    data = data.astype(np.float64)
    if frame.format.name.startswith(("s16", "s32", "s64")):
        data /= 2.0 ** (8 * frame.format.bytes - 1)
    return data.mean(axis=0)


def lag_of_best_match(output: np.ndarray, reference: np.ndarray, max_lag: int) -> tuple[int, float]:
    """(lag in samples, normalised correlation) maximising corr(output[n], reference[n + lag])
    over |lag| <= max_lag; `reference` is `output`'s expected content, same length."""
    n = len(output) - 2 * max_lag
    core = output[max_lag : max_lag + n]
    scores = []
    for lag in range(-max_lag, max_lag + 1):
        ref = reference[max_lag + lag : max_lag + lag + n]
        denom = float(np.linalg.norm(core) * np.linalg.norm(ref)) or 1.0
        scores.append(float(core @ ref) / denom)
    best = int(np.argmax(scores))
    return best - max_lag, scores[best]


def check_audio(src: Path, out: Path, fmt: str, plan) -> None:
    """The output's audio spans the video (within one audio frame) and is the source's
    [plan.start, plan.start + duration) window: silence where the source has none."""
    import av

    with av.open(str(out)) as container:
        tracks = [s.codec_context.name for s in container.streams.audio]
    allowed = {"mp4": {"aac", "mp3", "mp3float", "opus", "flac"}, "webm": {"opus", "vorbis"}}[fmt]
    assert len(tracks) == 1 and tracks[0] in allowed, tracks
    origin = video_start(src)
    source = decode_audio(src, origin)
    got = decode_audio(out, video_start(out))
    frame = max(source.frame, got.frame) + 1e-3
    assert -1e-3 <= got.first <= frame, f"audio starts at {got.first:.4f} s"
    assert abs(got.end - plan.duration) <= frame, (
        f"audio ends at {got.end:.4f} s, the video at {plan.duration:.4f} s (frame {frame:.4f} s)"
    )
    rate, lag = ANALYSIS_RATE, round(MAX_LAG_S * ANALYSIS_RATE)
    shift = round(plan.start * rate)  # output sample n is source sample n + shift
    # where the source has audio inside the window, the output must be that audio
    a = max(got.first, source.first - plan.start, 0.0) + MAX_LAG_S + 0.03
    b = min(got.end, source.end - plan.start, plan.duration) - MAX_LAG_S - 0.03
    assert b - a > 0.2, "too little audio to compare"
    lo, hi = round(a * rate) - lag, round(b * rate) + lag
    reference = np.zeros(hi - lo, np.float32)
    part = source.samples[max(0, lo + shift) : hi + shift]
    reference[max(0, -(lo + shift)) :][: len(part)] = part
    best, score = lag_of_best_match(_padded(got.samples, lo, hi), reference, lag)
    # Lag 0 to within the coarsest clock involved: MP4 keeps the sample clock, but
    # Matroska/WebM count milliseconds, so there a frame's place (e.g. Opus packets of
    # 20 ms after a 6.5 ms pre-skip) is only known to within a tick.
    slack = 1 + round(max(source.tick, got.tick) * rate)
    assert abs(best) <= slack and score > 0.8, f"best match at lag {best} samples ({score:.3f})"
    # where the source has no audio inside the window, the output is silent
    quiet = [(0.0, source.first - plan.start - frame), (source.end - plan.start + frame, got.end)]
    for q0, q1 in quiet:
        if q1 - q0 > 0.02:
            gap = _padded(got.samples, round(max(q0, 0) * rate), round(q1 * rate))
            assert np.sqrt(np.mean(gap**2)) < 1e-3, f"not silent from {q0:.3f} to {q1:.3f} s"


def _padded(samples: np.ndarray, lo: int, hi: int) -> np.ndarray:
    out = np.zeros(hi - lo, np.float32)
    part = samples[max(0, lo) : hi]
    out[max(0, -lo) :][: len(part)] = part
    return out


def video_start(path: str | os.PathLike) -> float:
    """Container time (s) of the first video frame: what plan times count from."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.start_time is None or not stream.time_base:
            return 0.0
        return float(stream.start_time * stream.time_base)


def frame_indices(frames) -> list[int | None]:
    return [read_frame_index(f) for f in frames]
