"""The `t2vz` command: a thin layer over the flows and t2vz_core.

    t2vz run MANIFEST --output-dir DIR [--device cuda --dtype fp16 --force --allowed-root DIR ...]
    t2vz validate MANIFEST
    t2vz report OUT_DIR [--summary]             (rebuild report.csv/json/parquet/html from the sidecars)
    t2vz models tiny DIR
    t2vz scan VIDEO_DIR --mode canny --prompt "..." [--set seed=3 ...] > manifest.csv
    t2vz serve ...                              (deployments with schedules: see flows/deploy.py)
    t2vz qc EDITED.mp4 --source SOURCE.mp4 [--json]   (temporal-consistency scores: flows/qc_cli.py)

Exit codes: 0 every row succeeded, 1 some row failed or was invalid (or the run was cancelled in
Prefect), 2 unreadable manifest, bad usage or no Prefect server, 130/143 stopped by SIGINT/SIGTERM.
Heavy imports (Prefect, torch) happen inside the subcommands, so `--help` and `validate` are quick.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_ROWS_FAILED, EXIT_USAGE = 0, 1, 2


def _eprint(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def _read(manifest: str, allowed_roots: list[str] | None):
    """(manifest, None) or (None, exit code) with the reason printed."""
    from t2vz_core.errors import InputError
    from t2vz_core.manifest import read_manifest

    try:
        return read_manifest(manifest, allowed_roots=allowed_roots), None
    except InputError as exc:  # ManifestFileError and bad allowed roots
        _eprint(f"t2vz: cannot use manifest: {exc}")
        return None, EXIT_USAGE


def _print_validation(manifest, path: str) -> None:
    from t2vz_core.manifest import format_errors

    if manifest.errors:
        _eprint(format_errors(manifest.errors, path))
    for warning in manifest.warnings:
        _eprint(f"{Path(path).name}: warning: {warning}")


# ---------------------------------------------------------------- run


class _Bars:
    """tqdm bars: rows finished, and chunks of the generation in progress (off when not a terminal)."""

    def __init__(self, total_rows: int, enabled: bool | None):
        from tqdm import tqdm

        self._tqdm = tqdm
        self._enabled = enabled
        disable = None if enabled is None else not enabled  # None: only on a terminal
        self.rows = tqdm(total=total_rows, desc="rows", unit="row", disable=disable, position=0)
        self._gen: dict[str, object] = {}

    def __call__(self, job_id: str, step: str, done: int, total: int, message: str) -> None:
        if step == "done":
            bar = self._gen.pop(job_id, None)
            if bar is not None:
                bar.close()
            self.rows.update(1)
            self.rows.set_postfix_str(f"{job_id}: {message}")
            return
        if step != "generate" or total <= 1:
            return
        bar = self._gen.get(job_id)
        if bar is None:
            bar = self._gen[job_id] = self._tqdm(
                total=total, desc=f"{job_id} generate", unit="step", leave=False, position=1, disable=self.rows.disable
            )
        bar.n = done
        bar.refresh()

    def close(self) -> None:
        for bar in self._gen.values():
            bar.close()
        self.rows.close()


# ---------------------------------------------------------------- run options, from RunOptions


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """One flag per RunOptions field (t2vz run and t2vz serve offer the same ones)."""
    from t2vz_core.options import RunOptions

    for name, field in RunOptions.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flag = extra.get("flag", "--" + name.replace("_", "-"))
        kind = _flag_kind(field.annotation)
        kwargs: dict = {"dest": name, "help": field.description}
        if kind is bool and field.default is True:  # on by default: the flag turns it off
            flag = extra.get("flag", "--no-" + name.replace("_", "-"))
            kwargs.update(action="store_false", default=None)
        elif kind is bool:
            kwargs.update(action="store_true", default=None)
        elif kind is list:
            kwargs.update(action="append", metavar=extra.get("metavar"))
        else:
            kwargs.update(type=kind, metavar=extra.get("metavar"), choices=extra.get("choices"))
        parser.add_argument(flag, **kwargs)


def _flag_kind(annotation: object) -> type:
    """bool, list, int or str: what an option's type annotation asks of its flag."""
    import typing

    for kind in (bool, list, int):
        if annotation is kind or typing.get_origin(annotation) is kind:
            return kind
    for arg in typing.get_args(annotation):
        if arg is not type(None):
            return _flag_kind(arg)
    return str


def run_options(args: argparse.Namespace):
    """The RunOptions the flags ask for (flags not given keep the model's defaults)."""
    from t2vz_core.options import RunOptions

    given = {name: getattr(args, name) for name in RunOptions.model_fields if getattr(args, name, None) is not None}
    return RunOptions(**given)


def cmd_run(args: argparse.Namespace) -> int:
    from t2vz_core.errors import InputError

    try:  # bad options fail here; a missing GPU fails in the flow, before any row needs it
        options = run_options(args)
        options.signature()
    except InputError as exc:
        _eprint(f"t2vz: {exc}")
        return EXIT_USAGE
    manifest, code = _read(args.manifest, options.allowed_roots)
    if manifest is None:
        return code
    _print_validation(manifest, args.manifest)
    if not options.force and not manifest.errors:
        done = _report_if_all_up_to_date(manifest, args.output_dir, options)
        if done is not None:  # nothing to run: no flow run (and no Prefect import) needed
            _print_report(done)
            print(f"all {len(manifest.jobs)} row(s) up to date: nothing to run (--force runs them again)")
            return EXIT_OK
    if not args.verbose:
        # Keep the console for progress bars; run logs still reach the Prefect API/UI.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    # Library chatter stays at warning level in runs (model loads themselves are quieter still).
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "warning")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    from flows.console import configure_run_console
    from t2vz_core.gc_pause import paused_gc

    configure_run_console(args.verbose)  # before the imports: their warnings go to the log too
    with paused_gc():  # Prefect and the flow's modules: full collections that free nothing otherwise
        from flows import lifecycle, signals
        from flows.batch import process_manifest
        from tasks import progress
    from t2vz_core.stop import stop_requested

    bars = _Bars(len(manifest.jobs), None if args.progress is None else args.progress)
    progress.add_listener(bars)
    try:  # server, signals and exit: flows.lifecycle
        outcome = lifecycle.run_flow(
            lambda: process_manifest(
                manifest_path=str(args.manifest), output_dir=str(args.output_dir), options=options, return_state=True
            )
        )
    finally:
        progress.remove_listener(bars)
        bars.close()
    if outcome.exit_code is not None:
        return outcome.exit_code
    state = outcome.state
    result = state.result(raise_on_failure=False)
    if not isinstance(result, dict):
        _eprint(f"t2vz: the run failed before finishing: {state.message or result}")
        return EXIT_ROWS_FAILED
    _print_report(result)
    counts = result["counts"]
    if os.environ.get("PREFECT_API_URL"):  # a lasting server: point at the run in its UI
        from prefect.settings import PREFECT_UI_URL

        if PREFECT_UI_URL.value():
            print(f"Prefect UI: {PREFECT_UI_URL.value()}/runs/flow-run/{state.state_details.flow_run_id}")
    if stop_requested():
        lifecycle.end_stopped_process(signals.exit_code_after_stop())  # after a signal: ends here
        return signals.exit_code_after_stop()  # 130 after SIGINT, 143 after SIGTERM, 1 if cancelled in Prefect
    return EXIT_OK if state.is_completed() and counts["ok"] == counts["total"] else EXIT_ROWS_FAILED


def _report_if_all_up_to_date(manifest, output_dir: Path, options) -> dict | None:
    """When every row's outputs are current (t2vz_core.freshness), the report, rewritten; else None."""
    from t2vz_core import freshness, report
    from t2vz_core.workdir import WorkDir

    out = Path(output_dir).absolute()
    if not manifest.jobs or not out.is_dir():
        return None
    work = WorkDir(options.resolved_work_dir(out))
    checks = freshness.check_rows(manifest.jobs, out, options.runtime(), work)
    if not all(check.current for check in checks.values()):
        return None
    current = freshness.current_sidecars(checks)
    lines = report.manifest_lines(manifest, out, current=current)
    return report.write_report(out, lines, report.manifest_extra(manifest), sidecars=current)


def _print_report(result: dict) -> None:
    for line in result["rows"]:
        where = ", ".join(line["outputs"]) or line["error"]
        note = " (up to date)" if line.get("up_to_date") else ""
        print(f"{line['status']:>8}  row {line['row']}  {line['job_id'] or '?'}: {where}{note}")
    counts = result["counts"]
    stopped = "".join(
        f", {counts[key]} {name}"
        for key, name in (("cancelled", "cancelled"), ("missing", "not run"))
        if counts.get(key)
    )
    print(
        f"{counts['ok']} ok, {counts['failed']} failed, {counts['invalid']} invalid{stopped}; "
        f"{counts.get('flagged', 0)} flagged by QC (warp_error_ratio over qc_max_warp_ratio); "
        f"report: {Path(result['output_dir']) / 'report.csv'}, gallery: {Path(result['output_dir']) / 'report.html'}"
    )


# ---------------------------------------------------------------- the rest


def cmd_validate(args: argparse.Namespace) -> int:
    manifest, code = _read(args.manifest, args.allowed_root)
    if manifest is None:
        return code
    _print_validation(manifest, args.manifest)
    bad = len(manifest.errors_by_row())
    print(f"{Path(args.manifest).name}: {len(manifest.jobs)} valid row(s), {bad} invalid row(s)")
    return EXIT_ROWS_FAILED if manifest.errors else EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """`t2vz report OUT_DIR` (manifest named in OUT_DIR/report.json) or `t2vz report MANIFEST -o OUT_DIR`."""
    import json

    target = Path(args.target)
    if target.is_dir():
        output_dir, manifest_path = target, args.manifest
        if manifest_path is None:
            try:
                manifest_path = json.loads((target / "report.json").read_text())["manifest"]
            except (OSError, ValueError, KeyError):
                _eprint(f"t2vz report: {target}/report.json names no manifest; give it with --manifest")
                return EXIT_USAGE
    else:
        manifest_path, output_dir = target, args.output_dir
        if output_dir is None:
            _eprint("t2vz report: give the output folder (t2vz report OUT_DIR, or MANIFEST --output-dir OUT_DIR)")
            return EXIT_USAGE
    manifest, code = _read(str(manifest_path), args.allowed_root)
    if manifest is None:
        return code
    from t2vz_core.report import write_manifest_report

    rep = write_manifest_report(manifest_path, output_dir, args.allowed_root)
    if args.summary:
        from t2vz_core import report_table

        print(report_table.summary_text(report_table.summarize_by_mode_status(report_table.report_frame(rep["rows"]))))
    counts = rep["counts"]
    print(
        f"{counts['ok']} ok, {counts['failed']} failed, {counts['invalid']} invalid, "
        f"{counts['missing']} not run; {counts.get('flagged', 0)} flagged by QC; "
        f"report: {Path(output_dir) / 'report.csv'}"
    )
    return EXIT_OK if counts["ok"] == counts["total"] else EXIT_ROWS_FAILED


def cmd_models_tiny(args: argparse.Namespace) -> int:
    from t2vz_core.tiny import write_tiny_models

    for name, path in write_tiny_models(Path(args.dir)).items():
        print(f"{name}: {path}")
    return EXIT_OK


def cmd_scan(args: argparse.Namespace) -> int:
    from t2vz_core.errors import InputError
    from t2vz_core.scan import scan_library

    defaults = {}
    for item in args.set or []:
        column, sep, value = item.partition("=")
        if not sep or not column.strip():
            _eprint(f"t2vz scan: --set expects COLUMN=VALUE, got {item!r}")
            return EXIT_USAGE
        defaults[column.strip()] = value
    try:
        text = scan_library(args.video_dir, args.mode, args.prompt, relative_to=args.relative_to, **defaults)
    except InputError as exc:
        _eprint(f"t2vz scan: {exc}")
        return EXIT_USAGE
    sys.stdout.write(text)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from flows import deploy
    from t2vz_core.errors import InputError

    try:
        deploy.serve(
            args.manifests,
            output_dir=args.output_dir,
            cron=args.cron or None,
            timezone=args.timezone,
            options=run_options(args),
            gpus=args.gpus,
        )
    except (FileNotFoundError, InputError) as exc:  # no such manifest, no server to serve from
        _eprint(f"t2vz serve: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _add_serve(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve manifests as scheduled deployments from this machine (needs PREFECT_API_URL; see flows/deploy.py)",
    )
    serve.add_argument("manifests", help="a manifest, or a folder of manifests (one deployment each)")
    serve.add_argument(
        "--output-dir",
        "-o",
        type=Path,
        help="outputs go to OUTPUT_DIR/<manifest stem> (default: out/<stem> beside the manifest)",
    )
    serve.add_argument("--cron", default="0 2 * * *", help="schedule (default nightly 02:00); '' for none")
    serve.add_argument("--timezone", help="of the cron schedule (default UTC)")
    add_run_options(serve)
    serve.add_argument("--gpus", type=int, default=1, help="runs at once on this box (one per GPU)")
    serve.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    from t2vz_core.modes import MODES, SOURCE_MODES

    parser = argparse.ArgumentParser(prog="t2vz", description="Batch video editing with Text2Video-Zero on Prefect.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def manifest_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("manifest", help="CSV manifest, one job per row (see manifests/README.md)")
        p.add_argument(
            "--allowed-root",
            action="append",
            metavar="DIR",
            help="folder sources may come from (repeatable; default: T2VZ_ALLOWED_ROOTS, else the manifest's folder)",
        )

    run = sub.add_parser("run", help="run every row of a manifest")
    run.add_argument("manifest", help="CSV manifest, one job per row (see manifests/README.md)")
    run.add_argument("--output-dir", "-o", required=True, type=Path, help="where videos, sidecars and report go")
    add_run_options(run)
    run.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always show progress bars (default: only on a terminal)",
    )
    run.add_argument("--no-progress", dest="progress", action="store_false")
    run.add_argument("--verbose", "-v", action="store_true", help="show Prefect's run logs on the console")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check a manifest without running it")
    manifest_args(validate)
    validate.set_defaults(func=cmd_validate)

    rep = sub.add_parser("report", help="rebuild report.csv/json from the sidecars in an output folder")
    rep.add_argument("target", help="the output folder (its report.json names the manifest), or the manifest")
    rep.add_argument("--output-dir", "-o", type=Path, help="the output folder, when TARGET is the manifest")
    rep.add_argument("--manifest", help="the manifest, when TARGET is the output folder")
    rep.add_argument("--allowed-root", action="append", metavar="DIR")
    rep.add_argument(
        "--summary", action="store_true", help="also print per mode and status: rows, frames, timings, median QC scores"
    )
    rep.set_defaults(func=cmd_report)

    models = sub.add_parser("models", help="model utilities")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    tiny = models_sub.add_parser("tiny", help="write the tiny random-weight models (tests, offline demo)")
    tiny.add_argument("dir", help="folder to write sd/, pix2pix/, controlnet-*/, sdxl/ into")
    tiny.set_defaults(func=cmd_models_tiny)

    scan = sub.add_parser("scan", help="print a manifest with one row per video in a folder")
    scan.add_argument("video_dir")
    scan.add_argument("--mode", required=True, choices=[m for m in MODES if m in SOURCE_MODES])
    scan.add_argument("--prompt", required=True)
    scan.add_argument("--relative-to", help="write sources relative to this folder (default: current folder)")
    scan.add_argument("--set", action="append", metavar="COLUMN=VALUE", help="a column for every row (repeatable)")
    scan.set_defaults(func=cmd_scan)

    _add_serve(sub)
    from flows import qc_cli

    qc_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "max_workers", None) is not None and args.max_workers < 1:
        _eprint("t2vz: --max-workers must be at least 1")
        return EXIT_USAGE
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
