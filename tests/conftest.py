import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from helpers import FASHION_MNIST, run_snakemake, tiny_config
from prerequisites import missing

# Tests run torch in several processes at once (Snakemake jobs): keep each one to few threads.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# torch.hub's cache of the machine (weights torchvision downloaded) is read by the weights job: the tests see an
# empty one of their own, so that what they download is what they check (tests that need one set TORCH_HOME).
_TORCH_HOME = tempfile.mkdtemp(prefix="finetune-tests-torch-home-")
os.environ["TORCH_HOME"] = _TORCH_HOME
atexit.register(shutil.rmtree, _TORCH_HOME, True)


# Under pytest-xdist (`make test` runs one worker per core), the tests of these files run on one worker: they share a
# fixture too costly to build twice (the Slurm cluster, a session fixture that must not start twice on one machine; the
# uninterrupted and resumed runs of a module). Every other test goes to whichever worker is free.
ONE_WORKER_FILES = {"test_slurm.py", "test_distributed.py", "test_pipeline_behaviour.py", "test_training_faults.py"}


@pytest.hookimpl(optionalhook=True)  # a hook of xdist's: pytest without xdist (-p no:xdist) does not know it
def pytest_xdist_make_scheduler(config, log):
    """xdist's `load` scheduling, but each file of ONE_WORKER_FILES is one unit of work (xdist's own `loadgroup`
    cannot group under pytest 9: it renames items through an attribute pytest 9 no longer reads)."""
    if config.getvalue("dist") != "load":
        return None  # a --dist the user chose
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerForSharedFixtures(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if Path(path).name in ONE_WORKER_FILES else nodeid

    return OneWorkerForSharedFixtures(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Before `-m "not slow"` deselects: a test that needs the tiny DAG is slow (the whole DAG through the real
    snakemake takes minutes on 2 busy cores), whether it asks for tiny_run itself or through other fixtures."""
    for item in items:
        if "tiny_run" in getattr(item, "fixturenames", ()):  # the fixture closure: tiny_run_copy needs tiny_run
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Tests marked fashion_mnist skip where the files are missing, before any fixture runs; in CI they error.
    Tests marked gpu skip where there is no CUDA device."""
    if "fashion_mnist" in item.keywords and not Path(FASHION_MNIST).is_dir():
        missing(f"{FASHION_MNIST} missing: apt-get install dataset-fashion-mnist")
    if "gpu" in item.keywords:
        import torch

        if not torch.cuda.is_available():  # a plain skip, in CI too: CI machines have no GPU
            pytest.skip(f"needs a CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, "
                        f"built for CUDA {torch.version.cuda or 'none'})")


def module_records(workdir: Path) -> Path:
    """Where the tiny run's jobs list the finetune modules they loaded (FINETUNE_RECORD_MODULES)."""
    return workdir.with_name(f"{workdir.name}_modules")


def _run_tiny_dag(workdir: Path) -> None:
    run_snakemake(workdir, tiny_config(workdir), env={"FINETUNE_RECORD_MODULES": str(module_records(workdir))})


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny real config run once through the real `snakemake`; tests read (never modify) its outputs.
    Under pytest-xdist (`make test` runs a worker per core) the workers share one run: the first to need it builds
    it under a lock in their common temporary folder, and the others wait for it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        workdir = tmp_path_factory.mktemp("tiny_run")
        _run_tiny_dag(workdir)
        return workdir
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent
    workdir, built = shared / "tiny_run", shared / "tiny_run.built"
    with FileLock(str(shared / "tiny_run.lock")):
        if not built.exists():  # a worker whose build failed left no mark: the next one builds it afresh
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(module_records(workdir), ignore_errors=True)
            workdir.mkdir()
            _run_tiny_dag(workdir)
            built.touch()
    return workdir


@pytest.fixture(scope="session")
def tiny_run_modules(tiny_run) -> Path:
    """One file per job of the tiny run, <script>.<pid>.txt, listing the finetune modules it loaded."""
    return module_records(tiny_run)


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run (mtimes kept), for tests that change or break things."""
    destination = tmp_path / "run"
    shutil.copytree(tiny_run, destination, symlinks=True)
    return destination
