"""Media I/O: probe, plan, stream-decode (decord guarded, PyAV fallback), FrameStore, encode.

info = probe("in.mp4")
plan = plan_decode(info, DecodeSpec(resolution=512, fps=Fraction(15), max_frames=48))
for chunk in iter_frames("in.mp4", plan): ...          # uint8 (k, H, W, 3)
store = decode_to_store("in.mp4", plan, "work/frames")  # PNG folder, reused when unchanged
encode_video(store, "out.mp4", plan.fps, audio_source="in.mp4", audio_start=plan.start)
"""

from t2vz_core.media.decode import BACKENDS, DecodeTimeout, choose_backend, iter_frames
from t2vz_core.media.encode import FORMATS, encode_video, iter_chunks, write_png_sequence
from t2vz_core.media.geometry import Geometry
from t2vz_core.media.plan import DecodePlan, DecodeSpec, plan_decode
from t2vz_core.media.probe import VideoInfo, probe
from t2vz_core.media.store import FrameStore, FrameStoreWriter
from t2vz_core.media.workflow import decode_to_store, plan_fingerprint
from t2vz_core.rates import fraction_text, to_fraction

__all__ = [
    "BACKENDS",
    "FORMATS",
    "DecodePlan",
    "DecodeSpec",
    "DecodeTimeout",
    "FrameStore",
    "FrameStoreWriter",
    "Geometry",
    "VideoInfo",
    "choose_backend",
    "decode_to_store",
    "encode_video",
    "fraction_text",
    "iter_chunks",
    "iter_frames",
    "plan_decode",
    "plan_fingerprint",
    "probe",
    "to_fraction",
    "write_png_sequence",
]
