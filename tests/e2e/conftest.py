"""Wiring of the kind end-to-end tier: the opt-in skip, the session cluster, per-scenario namespaces, failure dumps.

Tests marked `e2e` are skipped unless pytest runs with `--e2e` (registered in tests/conftest.py), and skipped
with "docker/kind not found: ..." when docker, kind, kubectl or a running Docker engine is missing. With all of
them, the session builds both images, creates (or reuses) a kind cluster, loads the images, installs kubellm from
deploy/ and waits for the operator; a failed scenario gets the state of its namespace and the operator's log
appended to its report and written under build/e2e-dumps/.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator

import pytest
from e2e_support import (
    BUILD_TIMEOUT_S,
    CLUSTER_CREATE_TIMEOUT_S,
    IMAGE_LOAD_TIMEOUT_S,
    Cluster,
    CommandFailed,
    E2ESettings,
    run,
    skip_reason,
)

from kubellm_emulator.pytest_plugin import emulator  # noqa: F401  (the helpers' contract test uses it)
from kubellm_sandbox import kind

SCENARIO_KEY = pytest.StashKey[tuple[Cluster, str]]()
FAILED_KEY = pytest.StashKey[bool]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e_items = [item for item in items if item.get_closest_marker("e2e") is not None]
    if not e2e_items:
        return
    reason = skip_reason(opted_in=bool(config.getoption("e2e", default=False)))
    if reason is not None:
        for item in e2e_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def kind_cluster() -> Iterator[Cluster]:
    """A kind cluster running the operator built from this tree; deleted at the end if this session created it."""
    settings = E2ESettings.from_env(os.environ)
    cluster = Cluster(settings)
    for command in kind.build_commands():
        run(command, timeout_s=BUILD_TIMEOUT_S)
    created = settings.cluster not in run(kind.list_clusters_command()).stdout.split()
    if created:
        run(kind.create_cluster_command(settings.cluster), timeout_s=CLUSTER_CREATE_TIMEOUT_S)
    else:
        run(kind.export_kubeconfig_command(settings.cluster))
    try:
        run(kind.load_images_command(settings.cluster), timeout_s=IMAGE_LOAD_TIMEOUT_S)
        try:
            for command in kind.install_commands(settings.cluster):
                run(command, timeout_s=kind.OPERATOR_ROLLOUT_TIMEOUT_S + 30)
        except CommandFailed as error:
            raise CommandFailed(
                f"{error}\n\n=== state of {kind.OPERATOR_NAMESPACE}\n{cluster.dump(kind.OPERATOR_NAMESPACE)}"
            ) from error
        yield cluster
    finally:
        if created and not settings.keep:
            run(kind.delete_cluster_command(settings.cluster), timeout_s=CLUSTER_CREATE_TIMEOUT_S, check=False)


@pytest.fixture
def namespace(kind_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one scenario, so scenarios never see each other's objects or events."""
    scenario = request.node.originalname.removeprefix("test_").replace("_", "-")[:40].strip("-")
    name = f"e2e-{scenario}-{uuid.uuid4().hex[:5]}"
    kind_cluster.kubectl("create", "namespace", name)
    request.node.stash[SCENARIO_KEY] = (kind_cluster, name)
    yield name
    failed = request.node.stash.get(FAILED_KEY, False)
    if not (failed and kind_cluster.settings.keep):  # a kept cluster keeps a failed scenario's namespace to inspect
        kind_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    scenario = item.stash.get(SCENARIO_KEY, None)
    if report.when == "call" and report.failed and scenario is not None:
        item.stash[FAILED_KEY] = True
        cluster, name = scenario
        state = cluster.dump(name)
        report.sections.append((f"kubellm e2e state of namespace {name}", state))
        cluster.settings.dump_dir.mkdir(parents=True, exist_ok=True)
        (cluster.settings.dump_dir / f"{name}.txt").write_text(f"{item.nodeid}\n\n{state}")
    return report
