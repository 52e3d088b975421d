"""`t2vz qc EDITED --source SOURCE [--json]`: temporal-consistency scores of any edited video.

--json prints exactly the sidecar's "qc" object; without it, a short table (t2vz_core.qc says
what the scores mean). Without --source the flow is measured on the edited video itself
(how text2video outputs are scored), and the source-based scores are null.
Exit codes: 0 scored, 2 unreadable file or bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_USAGE = 0, 2


def cmd_qc(args: argparse.Namespace) -> int:
    from t2vz_core.errors import InputError, MediaError
    from t2vz_core.qc import format_table, score_videos

    try:
        scores = score_videos(args.edited, args.source)
    except (InputError, MediaError) as exc:
        print(f"t2vz qc: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(scores.to_dict()))
    else:
        print(format_table(scores, args.edited, args.source))
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    qc = sub.add_parser("qc", help="temporal-consistency scores (warp error, flicker) of an edited video")
    qc.add_argument("edited", help="the edited video")
    qc.add_argument(
        "--source",
        help="the video it was made from (read at the edit's fps and size); "
        "without it the motion is measured on the edit itself",
    )
    qc.add_argument("--json", action="store_true", help="print the sidecar's qc object as JSON")
    qc.set_defaults(func=cmd_qc)
