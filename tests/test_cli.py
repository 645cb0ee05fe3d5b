"""finetune.cli.run: torch-free entry points stay torch-free; a stopped training job still exits 143."""

import os
import subprocess
import sys
import textwrap

from helpers import REPO


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})


def test_run_reports_an_error_without_importing_torch():
    result = run_python("""
        import sys, atexit
        from finetune.cli import run
        from finetune.errors import DataError
        atexit.register(lambda: print("torch loaded:", "torch" in sys.modules))
        def main():
            raise DataError("bad.png is not an image")
        run(main)
    """)
    assert result.returncode == 1
    assert "error: bad.png is not an image" in result.stderr
    assert "torch loaded: False" in result.stdout


def test_a_stopped_training_job_exits_143():
    result = run_python("""
        from finetune.cli import run
        from finetune.errors import StopRequested
        def main():
            raise StopRequested("SIGTERM")
        run(main)
    """)
    assert result.returncode == 143, result.stderr
    assert "stopped by SIGTERM" in result.stderr


def test_fast_exit_runs_atexit_and_flushes_what_was_printed():
    """run(main, fast_exit=True) skips the interpreter's teardown, not the atexit handlers nor buffered output."""
    result = run_python("""
        import atexit, sys
        from finetune.cli import run
        atexit.register(lambda: print("atexit ran"))
        def main():
            sys.stdout.write("written, not flushed")
        run(main, fast_exit=True)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "written, not flushedatexit ran\n"
