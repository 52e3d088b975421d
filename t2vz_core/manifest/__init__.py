"""CSV manifests: one `Job` per row, every bad cell reported at once, valid rows still returned.

`manifests/README.md` is the user-facing reference (columns, defaults, modes, examples); keep the
two in step. The manifest layer never loads a model: SDXL-ness is decided later, so an empty
`controlnet` stays None and `default_controlnet(mode, family)` picks one once the family is known.

Modules: `columns` (modes, columns, which mode uses which), `defaults` (per-mode defaults),
`cells` (strict single-cell parsers and bounds), `rules` (cross-column checks), `job` (the `Job`
model), `csvfile` (bytes to records, header checks), `errors` (how problems are reported),
`reader` (`read_manifest`). Import from `t2vz_core.manifest`; the split is an implementation detail.
"""

from t2vz_core.manifest.cells import (
    BOUNDS,
    FLOAT_FIELDS,
    INT_FIELDS,
    MAX_PROMPT_CHARS,
    SIZE_FIELDS,
    parse_bool,
    parse_float,
    parse_int,
    parse_outputs,
    parse_seconds,
)
from t2vz_core.manifest.columns import (
    APPLIES_TO,
    COLUMNS,
    CONTROLNET_MODES,
    FITS,
    MODES,
    OUTPUT_FORMATS,
    REQUIRED_COLUMNS,
    SOURCE_MODES,
    STRUCTURAL,
    Mode,
)
from t2vz_core.manifest.csvfile import MAX_MANIFEST_BYTES
from t2vz_core.manifest.defaults import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONTROLNET_SCALE,
    DEFAULT_GUIDANCE,
    DEFAULT_IMAGE_GUIDANCE,
    DEFAULT_MODEL,
    DEFAULT_MOTION,
    DEFAULT_PIX2PIX_MODEL,
    DEFAULT_RESOLUTION,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    DEFAULT_T0,
    DEFAULT_T1,
    DEFAULT_TEXT2VIDEO_FPS,
    DEFAULT_VIDEO_LENGTH,
    default_controlnet,
    default_model,
    default_t0_t1,
)
from t2vz_core.manifest.errors import ManifestError, ManifestFileError, format_errors
from t2vz_core.manifest.job import Job
from t2vz_core.manifest.reader import Manifest, read_manifest
from t2vz_core.manifest.rules import Problem

__all__ = [
    "APPLIES_TO",
    "BOUNDS",
    "COLUMNS",
    "CONTROLNET_MODES",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CONTROLNET_SCALE",
    "DEFAULT_GUIDANCE",
    "DEFAULT_IMAGE_GUIDANCE",
    "DEFAULT_MODEL",
    "DEFAULT_MOTION",
    "DEFAULT_PIX2PIX_MODEL",
    "DEFAULT_RESOLUTION",
    "DEFAULT_SEED",
    "DEFAULT_STEPS",
    "DEFAULT_T0",
    "DEFAULT_T1",
    "DEFAULT_TEXT2VIDEO_FPS",
    "DEFAULT_VIDEO_LENGTH",
    "FITS",
    "FLOAT_FIELDS",
    "INT_FIELDS",
    "MAX_MANIFEST_BYTES",
    "MAX_PROMPT_CHARS",
    "MODES",
    "OUTPUT_FORMATS",
    "REQUIRED_COLUMNS",
    "SIZE_FIELDS",
    "SOURCE_MODES",
    "STRUCTURAL",
    "Job",
    "Manifest",
    "ManifestError",
    "ManifestFileError",
    "Mode",
    "Problem",
    "default_controlnet",
    "default_model",
    "default_t0_t1",
    "format_errors",
    "parse_bool",
    "parse_float",
    "parse_int",
    "parse_outputs",
    "parse_seconds",
    "read_manifest",
]
