"""What tests/conftest.py decides (issue 12): a missing prerequisite skips its tests on a developer's machine
and is an error in CI; a test that needs the tiny DAG is slow, so `make test-fast` leaves it out.

Each case runs the real pytest in a subprocess on a small probe file, with tests/conftest.py loaded as a
plugin (FINETUNE_FASHION_MNIST pointed at a folder that does or does not exist, CI set or not), and reads
the outcomes from pytest's JUnit XML report or its list of collected tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from helpers import REPO

PROBE = '''
import pytest

from prerequisites import missing


@pytest.fixture
def cluster():
    missing("no cluster here")  # as tests/test_slurm.py's fixture does


@pytest.mark.fashion_mnist
def test_reads_fashion_mnist():
    pass


def test_needs_a_cluster(cluster):
    pass


def test_needs_nothing():
    pass
'''


SLOW_PROBE = '''
import pytest


@pytest.fixture
def reads_the_dag(tiny_run):
    return tiny_run


def test_reads_the_dag(tiny_run):
    pass


def test_reads_the_dag_through_a_fixture(reads_the_dag):
    pass


def test_changes_a_copy_of_the_dag(tiny_run_copy):
    pass


def test_quick():
    pass
'''


def run_pytest(tmp_path, probe: str, *args: str, dataset=None, ci: str | None = None) -> subprocess.CompletedProcess:
    """The real pytest on ``probe`` (a test file's text) with tests/conftest.py as a plugin; CI set only to ``ci``."""
    path = tmp_path / "probe" / "test_probe.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(probe)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(REPO / "tests")}
    if dataset is not None:
        env["FINETUNE_FASHION_MNIST"] = str(dataset)
    if ci is not None:
        env["CI"] = ci
    cmd = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-c", str(REPO / "pyproject.toml"),
           "--rootdir", str(REPO), "-q", *args, str(path)]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, env=env,
                          cwd=tmp_path)


def run_probe(tmp_path, dataset, ci: str | None) -> tuple[int, dict[str, tuple[str, str]]]:
    """pytest's exit status on PROBE and, per probe test, (outcome, message)."""
    report = tmp_path / "report.xml"
    result = run_pytest(tmp_path, PROBE, "--junitxml", str(report), dataset=dataset, ci=ci)
    assert report.exists(), result.stdout
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        verdicts = [(child.tag, child.get("message", "")) for child in case if child.tag in ("skipped", "error", "failure")]
        outcomes[case.get("name")] = verdicts[0] if verdicts else ("passed", "")
    return result.returncode, outcomes


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_a_missing_prerequisite_skips_with_its_reason(tmp_path, ci):
    absent = tmp_path / "no-fashion-mnist"
    status, outcomes = run_probe(tmp_path, absent, ci)
    assert status == 0, outcomes
    kind, message = outcomes["test_reads_fashion_mnist"]
    assert kind == "skipped" and str(absent) in message and "apt-get install dataset-fashion-mnist" in message
    assert outcomes["test_needs_a_cluster"] == ("skipped", "no cluster here")
    assert outcomes["test_needs_nothing"] == ("passed", "")


@pytest.mark.parametrize("ci", ["true"])
def test_in_ci_a_missing_prerequisite_is_an_error(tmp_path, ci):
    absent = tmp_path / "no-fashion-mnist"
    status, outcomes = run_probe(tmp_path, absent, ci)
    assert status == 1, outcomes
    kind, message = outcomes["test_reads_fashion_mnist"]
    assert kind == "error" and str(absent) in message and "not a skip" in message
    kind, message = outcomes["test_needs_a_cluster"]
    assert kind == "error" and "no cluster here" in message
    assert outcomes["test_needs_nothing"] == ("passed", "")


def test_in_ci_the_dataset_folder_where_it_is_lets_the_tests_run(tmp_path):
    present = tmp_path / "fashion-mnist"
    present.mkdir()
    status, outcomes = run_probe(tmp_path, present, "true")
    assert outcomes["test_reads_fashion_mnist"] == ("passed", "")
    assert outcomes["test_needs_a_cluster"][0] == "error"
    assert status == 1


@pytest.mark.parametrize("marks, expected", [
    ("not slow", ["test_quick"]),
    ("slow", ["test_reads_the_dag", "test_reads_the_dag_through_a_fixture", "test_changes_a_copy_of_the_dag"]),
])
def test_a_test_that_needs_the_tiny_dag_is_slow(tmp_path, marks, expected):
    result = run_pytest(tmp_path, SLOW_PROBE, "--collect-only", "-m", marks)
    collected = [line.split("::")[1] for line in result.stdout.splitlines() if "::" in line]
    assert collected == expected, result.stdout
