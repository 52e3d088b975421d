"""prefect.yaml and flows.deploy without a server: the deployments the workers will run exist,
their names match what the fan-out calls, bad specs are refused, shards and `serve` inputs are
right. (tests/test_server.py applies the same file to a real server.) ~2 s."""

from __future__ import annotations

import inspect

import pytest
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint

from flows import deploy
from t2vz_core.errors import InputError
from t2vz_core.options import RunOptions


def test_prefect_yaml_deployments_load_and_match_the_names_the_code_uses():
    specs = {spec["name"]: spec for spec in deploy.load_deployment_specs()}
    assert set(specs) == {"nightly", "shard"}
    full_names = {}
    for name, spec in specs.items():
        flow = load_flow_from_entrypoint(spec["entrypoint"])  # importable from the installed package
        full_names[f"{flow.name}/{name}"] = spec
        params = inspect.signature(flow.fn).parameters
        assert set(spec.get("parameters") or {}) <= set(params), name
        assert spec["work_pool"]["name"] == deploy.WORK_POOL
    nightly = full_names[deploy.FAN_OUT_DEPLOYMENT]
    shard = full_names[deploy.SHARD_DEPLOYMENT]
    assert nightly["work_pool"]["work_queue_name"] == deploy.DISPATCH_QUEUE
    assert shard["work_pool"]["work_queue_name"] == deploy.GPU_QUEUE
    [schedule] = nightly["schedules"]
    assert CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"]).cron == deploy.DEFAULT_CRON
    assert {"manifest_path", "output_dir"} <= set(nightly["parameters"])
    # The fan-out starts exactly the shard deployment of prefect.yaml, with parameters it accepts.
    assert inspect.signature(deploy.fan_out.fn).parameters["deployment"].default == deploy.SHARD_DEPLOYMENT
    shard_params = inspect.signature(load_flow_from_entrypoint(shard["entrypoint"]).fn).parameters
    assert {"manifest_path", "output_dir", "job_ids", "options"} <= set(shard_params)  # options: RunOptions, whole


def test_deployment_specs_fill_env_placeholders_and_refuse_what_they_would_drop(tmp_path, monkeypatch):
    path = tmp_path / "prefect.yaml"
    path.write_text(
        "deployments:\n  - name: n\n    entrypoint: flows.deploy.fan_out\n"
        "    parameters: {manifest_path: '{{ $T2VZ_TEST_MANIFEST }}'}\n"
    )
    monkeypatch.setenv("T2VZ_TEST_MANIFEST", "/data/m.csv")
    assert deploy.load_deployment_specs(path)[0]["parameters"] == {"manifest_path": "/data/m.csv"}

    path.write_text("deployments:\n  - name: n\n    entrypoint: flows.deploy.fan_out\n    job_variables: {}\n")
    with pytest.raises(ValueError, match=r"unsupported keys \['job_variables'\]"):
        deploy.load_deployment_specs(path)
    path.write_text("deployments:\n  - name: n\n    entrypoint: flows/deploy.py:fan_out\n")
    with pytest.raises(ValueError, match="module-path entrypoint"):
        deploy.load_deployment_specs(path)
    path.write_text(
        "deployments:\n  - name: n\n    entrypoint: flows.deploy.fan_out\n"
        "    schedules: [{cron: '0 2 * * *', slug: x}]\n"
    )
    with pytest.raises(ValueError, match=r"schedules\.slug"):
        deploy.load_deployment_specs(path)


@pytest.mark.parametrize(
    "ids, size, shards",
    [
        (["a", "b", "c", "d", "e"], 2, [["a", "b"], ["c", "d"], ["e"]]),
        (["a", "b"], 1, [["a"], ["b"]]),
        (["a", "b"], 10, [["a", "b"]]),
        ([], 3, []),
    ],
)
def test_shards_keep_manifest_order_and_cover_every_row_once(ids, size, shards):
    assert deploy.shard_job_ids(ids, size) == shards


def test_shard_size_must_be_positive():
    with pytest.raises(ValueError, match="shard_size"):
        deploy.shard_job_ids(["a"], 0)


def test_serve_finds_manifests_and_builds_one_scheduled_deployment_each(tmp_path):
    folder = tmp_path / "manifests"
    folder.mkdir()
    for name in ("b.csv", "a.csv", "notes.txt"):
        (folder / name).write_text("job_id,mode,prompt\n")
    assert [p.name for p in deploy.manifests_in(folder)] == ["a.csv", "b.csv"]
    assert deploy.manifests_in(folder / "b.csv") == [folder / "b.csv"]
    with pytest.raises(FileNotFoundError, match="no such manifest"):
        deploy.manifests_in(folder / "missing.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.csv"):
        deploy.manifests_in(tmp_path / "empty")

    deployments = deploy.serve_deployments(
        folder, tmp_path / "out", cron="15 4 * * *", timezone="Europe/Paris", options=RunOptions(device="cpu")
    )
    assert [d.name for d in deployments] == ["a", "b"]
    for d in deployments:
        assert d.entrypoint == "flows.batch.process_manifest"
        assert d.parameters["output_dir"] == str((tmp_path / "out" / d.name).resolve())
        assert d.parameters["manifest_path"] == str((folder / f"{d.name}.csv").resolve())
        [schedule] = d.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == ("15 4 * * *", "Europe/Paris")
    assert deploy.serve_deployments(folder / "a.csv", cron=None)[0].schedules in (None, [])


@pytest.mark.timeout(60)  # a regression would serve forever
def test_serve_refuses_to_run_without_a_prefect_server(tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    (tmp_path / "m.csv").write_text("job_id,mode,prompt\n")
    # Other modules may have entered the prefect_api fixture, which sets an API URL for the process.
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(InputError, match="PREFECT_API_URL"):
            deploy.serve(tmp_path / "m.csv")
