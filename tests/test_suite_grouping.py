"""The suite's own set-up: under `make test` (pytest-xdist, --dist loadgroup) each test carries its
group, so a module's fixtures are built on one worker only. pytest 9.2 silently broke this with
pytest-xdist 3.8 (pytest-dev/pytest-xdist#1386): the corpus run and the real-server stack were
then built twice, once per worker. constraints.txt pins pytest below 9.2 for that reason."""

import pytest


def test_tests_carry_their_xdist_group(request):
    if not hasattr(request.config, "workerinput") or not request.config.getvalue("loadgroup"):
        pytest.skip("not under pytest-xdist --dist loadgroup (make test runs it that way)")
    assert request.node.nodeid.endswith("@test_suite_grouping"), request.node.nodeid
