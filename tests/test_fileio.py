"""Atomic writes (finetune.fileio.atomic_path) with real processes: a writer killed mid-file leaves its temporary
file, which the next write of the same path removes (a running writer's stays); a write inside a write (a staged
path handed to a writer that writes atomically itself) is one temporary file, and a failure names the result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from helpers import REPO

from finetune.fileio import write_json

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
    assert f"a previous {target.name}, if any, is unchanged" in result.stdout
    assert target.read_bytes() == b"the earlier model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
