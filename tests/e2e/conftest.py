"""Wiring of the kind end-to-end tier: the opt-in skip, the session cluster, per-scenario namespaces, failure dumps.

Tests marked `e2e` are skipped unless pytest runs with `--e2e` (registered in tests/conftest.py), and skipped
with "docker/kind not found: ..." when docker, kind, kubectl or a running Docker engine is missing; with
KUBELLM_E2E_REQUIRED=1 (CI) either skip is an error instead, and so is a session in which no e2e test ran. With
all of them, the session builds both images, creates (or reuses) a kind cluster, loads the images, installs
kubellm from deploy/ and waits for the operator; a failed build, load or install is written under
build/e2e-dumps/session-setup.txt (with the operator namespace's state), and a failed scenario gets the state of
its namespace and the operator's log appended to its report and written under build/e2e-dumps/.
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
    required_failure,
    run,
    skip_reason,
)

from kubellm_emulator.pytest_plugin import emulator  # noqa: F401  (the helpers' contract test uses it)
from kubellm_sandbox import kind

SCENARIO_KEY = pytest.StashKey[tuple[Cluster, str]]()
FAILED_KEY = pytest.StashKey[bool]()
E2E_RAN_KEY = pytest.StashKey[int]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e_items = [item for item in items if item.get_closest_marker("e2e") is not None]
    if not e2e_items:
        return
    reason = skip_reason(opted_in=bool(config.getoption("e2e", default=False)))
    failure = required_failure(E2ESettings.from_env(os.environ), reason)
    if failure is not None:
        raise pytest.UsageError(failure)
    if reason is not None:
        for item in e2e_items:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Required and opted in, yet no e2e test ran (all deselected, or skipped from inside): not a green run."""
    if not session.config.getoption("e2e", default=False) or session.config.stash.get(E2E_RAN_KEY, 0) > 0:
        return
    failure = required_failure(E2ESettings.from_env(os.environ), "no e2e test ran in this session")
    if failure is not None:
        print(f"\n{failure}", flush=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def save_setup_failure(settings: E2ESettings, text: str) -> None:
    """A failed build, load or install leaves its story where CI uploads failure dumps from."""
    settings.dump_dir.mkdir(parents=True, exist_ok=True)
    (settings.dump_dir / "session-setup.txt").write_text(text)


@pytest.fixture(scope="session")
def kind_cluster() -> Iterator[Cluster]:
    """A kind cluster running the operator built from this tree; deleted at the end if this session created it."""
    settings = E2ESettings.from_env(os.environ)
    cluster = Cluster(settings)
    try:
        for command in kind.build_commands():
            run(command, timeout_s=BUILD_TIMEOUT_S)
    except CommandFailed as error:
        save_setup_failure(settings, str(error))
        raise
    created = settings.cluster not in run(kind.list_clusters_command()).stdout.split()
    if created:
        run(kind.create_cluster_command(settings.cluster), timeout_s=CLUSTER_CREATE_TIMEOUT_S)
    else:
        run(kind.export_kubeconfig_command(settings.cluster))
    try:
        try:
            run(kind.load_images_command(settings.cluster), timeout_s=IMAGE_LOAD_TIMEOUT_S)
            for command in kind.install_commands(settings.cluster):
                run(command, timeout_s=kind.OPERATOR_ROLLOUT_TIMEOUT_S + 30)
        except CommandFailed as error:
            failure = f"{error}\n\n=== state of {kind.OPERATOR_NAMESPACE}\n{cluster.dump(kind.OPERATOR_NAMESPACE)}"
            save_setup_failure(settings, failure)
            raise CommandFailed(failure) from error
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
    if report.when == "call" and not report.skipped and item.get_closest_marker("e2e") is not None:
        item.config.stash[E2E_RAN_KEY] = item.config.stash.get(E2E_RAN_KEY, 0) + 1
    scenario = item.stash.get(SCENARIO_KEY, None)
    if report.when == "call" and report.failed and scenario is not None:
        item.stash[FAILED_KEY] = True
        cluster, name = scenario
        state = cluster.dump(name)
        report.sections.append((f"kubellm e2e state of namespace {name}", state))
        cluster.settings.dump_dir.mkdir(parents=True, exist_ok=True)
        (cluster.settings.dump_dir / f"{name}.txt").write_text(f"{item.nodeid}\n\n{state}")
    return report
