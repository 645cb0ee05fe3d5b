"""Small file helpers: hashing and atomic writes, so a crash never leaves a half-written result."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import io
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import DamagedFile, WriteError

# errno values that can only mean "the file system refused a write" (a permission error inside the
# block may be about reading an input, so it is left as it is).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}

# The process's umask, read once at import (reading it means setting it, which is not thread-safe).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _new_file_mode(target: Path) -> int:
    """The permissions a plain ``open(target, "w")`` would leave: an existing file's own, else
    0666 less the umask (mkstemp's temporary files are 0600, which would hide every result from the
    user's group on a shared cluster)."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_UMASK


def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_failed(target: Path, exc: OSError) -> WriteError:
    reason = exc.strerror or str(exc)
    blocking = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        return WriteError(f"cannot write {target}: {blocking} is a file, not a folder; move it away or choose another path")
    hint = {
        errno.ENOSPC: "free disk space",
        errno.EDQUOT: "free space within your quota",
        errno.EFBIG: "raise the file size limit (ulimit -f) or write elsewhere",
        errno.EROFS: "make the folder writable or run from a writable working directory",
    }.get(exc.errno, "check that the folder exists and is writable")
    return WriteError(
        f"cannot write {target}: {reason} (errno {exc.errno}); {hint}, then rerun. "
        f"Nothing half-written was left: run alone, a previous {target.name} is unchanged (Snakemake removes a job's "
        "outputs as it starts it)"
    )


# The temporary files of the atomic_path blocks under way in this process: {temporary path: its target}.
_WRITING: dict[Path, Path] = {}
def _host_tag() -> str:
    """This host, and its PID namespace where it has one (containers sharing a host name and a file system do
    not see each other's processes): the pids in temporary files' names are of processes seen from here."""
    try:
        namespace = f"_{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        namespace = ""
    return socket.gethostname().replace(".", "_") + namespace


_HOST = _host_tag()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file is flushed to disk (fsync) before the rename, and the rename is atomic on
    POSIX, so readers, and a machine that loses power, see either the old file or the complete new
    one. A full disk, a file size limit or a read-only file system becomes a :class:`WriteError`
    naming ``path``; the temporary file is removed and the old file stays as it was.

    The temporary file's name, ``.<name>.<host>-<pid>.<random>.tmp``, says which process writes it: a
    process killed while writing (SIGKILL, a walltime) cannot remove its own, so the next write of
    ``path`` removes those of processes of this host that no longer run. ``path`` that is itself the
    temporary file of a block under way (a writer handed a staged path) is written as it is, and a
    failed write names the block's target.
    """
    target = Path(path)
    if target in _WRITING:
        yield from _write_staged(target, _WRITING[target])
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(target)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{_HOST}-{os.getpid()}.", suffix=".tmp",
                                        dir=target.parent)
        try:
            os.fchmod(fd, _new_file_mode(target))
        finally:
            os.close(fd)
    except OSError as exc:
        raise _write_failed(target, exc) from exc
    tmp = Path(tmp_name)
    _WRITING[tmp] = target
    try:
        yield from _write_staged(tmp, target)
        try:
            _fsync(tmp)
            os.replace(tmp, target)
        except OSError as exc:
            raise _write_failed(target, exc) from exc
    finally:
        del _WRITING[tmp]
        if tmp.exists():
            tmp.unlink()


def _write_staged(staged: Path, target: Path) -> Iterator[Path]:
    """The block's writes into ``staged``, a full disk and the like named as writes of ``target`` (the block of an
    atomic_path, and of one nested in it, which writes the outer one's temporary file)."""
    try:
        yield staged
    except OSError as exc:
        if exc.errno in _WRITE_ERRNOS:
            raise _write_failed(target, exc) from exc
        raise


def _remove_abandoned(target: Path) -> None:
    """Remove the temporary files of ``target`` left by writers of this host that no longer run."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.{re.escape(_HOST)}-(\d+)\.[^.]+\.tmp")
    for entry in target.parent.glob(f".{glob.escape(target.name)}.{glob.escape(_HOST)}-*.tmp"):
        match = pattern.fullmatch(entry.name)
        if match and not _running(int(match.group(1))):
            with contextlib.suppress(OSError):
                entry.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: it runs
        return True
    return True


def ensure_writable(*paths: str | os.PathLike) -> None:
    """Fail now, not after hours of work, when a result's folder cannot be created or written.

    Creates each folder and a temporary file in it (removed at once); raises :class:`WriteError`
    naming the path.
    """
    for path in paths:
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=target.parent)
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            raise _write_failed(target, exc) from exc


def _fsync(path: Path) -> None:
    if not path.is_file():  # the block may have written a directory or nothing at all
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _RecordingWriter(io.RawIOBase):
    """A write-only file wrapper that remembers the OSError of a failed write.

    torch.save reports a failed write as an opaque RuntimeError ("unexpected pos ..."); the
    recorded OSError says why (disk full, file too large).
    """

    def __init__(self, handle):
        super().__init__()
        self._handle = handle
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self._handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._handle.flush()


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically; a failed write raises a WriteError naming ``path``."""
    import torch

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            writer = _RecordingWriter(handle)
            try:
                torch.save(obj, writer)
            except RuntimeError as exc:
                if writer.error is not None:
                    raise writer.error from exc
                raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``; a file that holds no JSON raises :class:`DamagedFile` naming it and the place."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f"{exc.msg} at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else \
            "not UTF-8 text"
        raise DamagedFile(f"{path} is not valid JSON ({where}): cut short or edited by hand? A file the workflow wrote "
                          f"is written again by `snakemake --forcerun {path}`") from exc


def json_kind(value: Any) -> str:
    """What a JSON value is, said in a message (``a list``, ``null``)."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), "null")


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in ``path``; anything else raises :class:`DamagedFile` (``what`` names the file the workflow
    writes there: ``is it the run's train_info.json?``)."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise DamagedFile(f"{path} holds {json_kind(value)}, not a JSON object: is it {what}?")
    return value


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_text_table(path: str | os.PathLike):
    """A CSV file a person may have written (a dataset manifest, a list of images to classify) as a DataFrame of
    strings, empty cells as "": spaces after the commas (`path, label`) are skipped and the column names
    stripped; Excel's byte-order mark is read away. Row i is on line ``table_lines(path, rows)[i]`` of the file.
    pandas' parse errors and UnicodeDecodeError propagate."""
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    frame.columns = [str(column).strip() for column in frame.columns]
    return frame


def table_lines(path: str | os.PathLike, rows: int) -> list[int]:
    """The line of the file each of the ``rows`` rows of :func:`read_text_table` starts on, blank lines and quoted
    line breaks counted (pandas skips the blank ones), for a message that names a line: read again only then.
    Where the two reads disagree on the rows, the row's number + 2 (the header on line 1)."""
    lines = _record_lines(path)
    return lines[1:] if len(lines) == rows + 1 else list(range(2, rows + 2))


def _record_lines(path: str | os.PathLike) -> list[int]:
    """The line each record of a CSV file starts on, the header's first, leaving out the lines pandas skips as
    blank (empty, or only spaces and tabs)."""
    import csv

    lines = []
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f, skipinitialspace=True)
        for record in reader:
            if len(record) <= 1 and not "".join(record).strip(" \t"):
                continue
            lines.append(reader.line_num - sum(cell.count("\n") for cell in record))
    return lines
