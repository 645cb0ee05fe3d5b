"""Atomic writes (finetune.fileio.atomic_path) with real processes: a writer killed mid-file leaves its temporary
file, which the next write of the same path removes (a running writer's stays); a write inside a write (a staged
path handed to a writer that writes atomically itself) is one temporary file, and a failure names the result; a
full disk (the kernel's own ENOSPC) names the result and says what to free."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO

from finetune.errors import WriteError
from finetune.fileio import atomic_path, write_json

HALF_WRITTEN = textwrap.dedent("""
    import sys, time
    from finetune.fileio import atomic_path
    block = atomic_path(sys.argv[1])
    tmp = block.__enter__()
    tmp.write_text("half a result")
    print(tmp, flush=True)
    time.sleep(600)
""")


def _writer(target) -> tuple[subprocess.Popen, str]:
    """A process in the middle of an atomic write of ``target``, and its temporary file."""
    process = subprocess.Popen([sys.executable, "-c", HALF_WRITTEN, str(target)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    return process, process.stdout.readline().strip()


def _temporaries(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_the_temporary_file_of_a_killed_writer_goes_at_the_next_write_and_a_running_one_s_stays(tmp_path):
    target = tmp_path / "model.json"
    killed, killed_tmp = _writer(target)
    running, running_tmp = _writer(target)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
        assert os.path.exists(killed_tmp) and os.path.exists(running_tmp)
        assert _temporaries(tmp_path) == sorted(os.path.basename(t) for t in (killed_tmp, running_tmp))
        write_json(target, {"epochs": 3})
        assert not os.path.exists(killed_tmp), "the killed writer's half-written file is left"
        assert os.path.exists(running_tmp), "a running writer's file was taken from under it"
        assert target.read_text() == '{\n  "epochs": 3\n}\n'
        other = tmp_path / "other.json"  # another file's temporaries are not this one's
        write_json(other, {})
        assert _temporaries(tmp_path) == [os.path.basename(running_tmp)]
    finally:
        running.kill()
        running.wait(timeout=60)


NESTED = textwrap.dedent("""
    import resource, sys
    from finetune.errors import WriteError
    from finetune.fileio import atomic_path
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
    try:
        with atomic_path(sys.argv[1]) as staged:
            with atomic_path(staged) as inner:
                print("same file:", inner == staged, flush=True)
                with open(inner, "wb") as f:
                    f.write(bytes(1 << 20))
    except WriteError as exc:
        print(f"error: {exc}")
""")


def test_a_write_inside_a_write_names_the_result_and_leaves_nothing(tmp_path):
    """As the export (the exporter writes the staged model.onnx) and the weights download do: a full disk (here a
    file size limit) named the hidden temporary file, and a kill left two temporary files, one inside the other."""
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the earlier model")
    result = subprocess.run([sys.executable, "-c", NESTED, str(target)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                            preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN), timeout=120)
    assert "same file: True" in result.stdout, result.stdout + result.stderr
    assert f"error: cannot write {target}: File too large (errno 27)" in result.stdout, result.stdout + result.stderr
    assert f"run alone, a previous {target.name} is unchanged" in result.stdout
    assert target.read_bytes() == b"the earlier model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_full_disk_names_the_result_says_to_free_space_and_replaces_nothing(tmp_path):
    """/dev/full refuses every write with the kernel's ENOSPC, as a full disk does: the error raised inside the block
    is the result's write failing, and the message says which space to free (each errno has its own remedy)."""
    target = tmp_path / "metrics.json"
    target.write_text("the earlier metrics")
    with pytest.raises(WriteError) as refused:
        with atomic_path(target) as staged:
            staged.write_text("the first half")
            with open("/dev/full", "wb", buffering=0) as full:
                full.write(b"the second half")
    assert str(refused.value) == (
        f"cannot write {target}: {os.strerror(errno.ENOSPC)} (errno {errno.ENOSPC}); free disk space, then rerun. "
        "Nothing half-written was left: run alone, a previous metrics.json is unchanged (Snakemake removes a job's "
        "outputs as it starts it)")
    assert target.read_text() == "the earlier metrics"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_an_input_that_cannot_be_read_inside_the_block_is_not_called_a_failed_write(tmp_path):
    """A block reads its inputs as it writes (an exporter reads the checkpoint): an input missing, or refused to this
    user, is that input's error as the OS gave it, not "cannot write" the result, which would send the user to free
    disk space. The result is not replaced, and no temporary file is left."""
    target = tmp_path / "report.json"
    target.write_text("the earlier report")
    missing = tmp_path / "history.csv"
    with pytest.raises(FileNotFoundError) as raised:
        with atomic_path(target) as staged:
            staged.write_text(missing.read_text())
    assert raised.value.filename == str(missing)
    assert target.read_text() == "the earlier report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
