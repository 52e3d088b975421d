"""Depth maps via controlnet-aux MiDaS (DPT-Hybrid) or ZoeDepth, when weights are at hand."""

from __future__ import annotations

from functools import lru_cache

from t2vz_core.control.annotators import DEFAULT_ANNOTATOR, resolve_weights
from t2vz_core.control.pose import AuxDetectorMapper

DEFAULTS = {"annotator": DEFAULT_ANNOTATOR, "detect_resolution": 384, "device": "cpu"}
WEIGHTS = {"midas": "dpt_hybrid-midas-501f0c75.pt", "zoe": "ZoeD_M12_N.pt"}


def depth_mapper(backend: str, annotator: str, detect_resolution: int, device: str) -> AuxDetectorMapper:
    folder = resolve_weights(f"depth backend '{backend}'", annotator, [WEIGHTS[backend]])
    detector = _aux_depth(backend, str(folder), device)
    return AuxDetectorMapper(detector, detect_resolution=detect_resolution)


@lru_cache(maxsize=2)
def _aux_depth(backend: str, folder: str, device: str):
    if backend == "midas":
        from controlnet_aux import MidasDetector

        return MidasDetector.from_pretrained(folder).to(device)
    from controlnet_aux import ZoeDetector

    return ZoeDetector.from_pretrained(folder).to(device)
