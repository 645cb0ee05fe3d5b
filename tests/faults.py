"""Shared by the bad-input and fault tests: tiny real datasets, real weights files, a real HTTP server."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import REPO, run_script

# What the tiny weights expect: 32 px, no resize beyond the crop.
PREPROCESSING_32 = {"resize_size": 32, "crop_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def make_images(root: Path, counts: dict[str, int], size: int = 32, ext: str = ".png", seed: int = 0) -> dict:
    """An ImageFolder ``root/<class>/<i><ext>`` of small random RGB images, each class its own tint."""
    rng = np.random.default_rng(seed)
    paths = {}
    for c, (name, n) in enumerate(counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        tint = np.array([(60 * c) % 256, (120 + 50 * c) % 256, (200 - 40 * c) % 256], dtype=np.int16)
        paths[name] = []
        for i in range(n):
            noise = rng.integers(-40, 40, (size, size, 3))
            pixels = np.clip(tint + noise, 0, 255).astype(np.uint8)
            path = folder / f"{i:03d}{ext}"
            Image.fromarray(pixels).save(path)
            paths[name].append(path)
    return paths


def make_bad_images(folder: Path) -> dict[str, Path]:
    """One file of each kind the split must refuse, in ``folder``: {kind: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    good = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    bad = {}
    good.save(folder / "source.png")
    png = (folder / "source.png").read_bytes()
    (folder / "source.png").unlink()
    bad["truncated_png"] = folder / "truncated.png"
    bad["truncated_png"].write_bytes(png[: len(png) // 2])
    corrupt = bytearray(png)
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 32] = b"\x00" * 32  # inside the compressed pixel data
    bad["corrupt_png"] = folder / "corrupt.png"
    bad["corrupt_png"].write_bytes(bytes(corrupt))
    good.save(folder / "source.jpg", quality=90)
    jpg = (folder / "source.jpg").read_bytes()
    (folder / "source.jpg").unlink()
    bad["truncated_jpg"] = folder / "truncated.jpg"
    bad["truncated_jpg"].write_bytes(jpg[: len(jpg) // 3])
    bad["zero_bytes"] = folder / "empty.png"
    bad["zero_bytes"].write_bytes(b"")
    bad["not_an_image"] = folder / "notes.jpg"
    bad["not_an_image"].write_text("shopping list: milk, eggs\n")
    bad["decompression_bomb"] = folder / "bomb.png"
    bad["decompression_bomb"].write_bytes(black_png(BOMB_SIDE, BOMB_SIDE))
    bad["named_pipe"] = folder / "pipe.png"  # opened, it would wait for a writer forever
    os.mkfifo(bad["named_pipe"])
    return bad


BOMB_SIDE = 17_500  # 306 megapixels: a 0.3 MB file that decodes to 306 MB of gray (919 MB as RGB)


def black_png(width: int, height: int) -> bytes:
    """A valid 8-bit gray PNG of ``width`` x ``height`` black pixels, compressed row by row (never held whole)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row, parts = zlib.compressobj(9), bytes(width + 1), []  # each row: filter byte 0, then pixels
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def assert_same_state(actual: dict, expected: dict) -> None:
    """Two state dicts hold the same keys and, for each, the very same tensor values."""
    import torch

    assert actual.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert not different, f"{len(different)} tensor(s) differ, e.g. {different[:5]}"


def save_state_dict(path: Path, arch: str = "resnet18", num_classes: int = 3, seed: int = 0) -> str:
    """A randomly initialised torchvision ``arch`` state_dict at ``path``; returns its sha256."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return sha256(path)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def weights_config(**overrides) -> dict:
    cfg = {"source": "path", "arch": "resnet18", "preprocessing": PREPROCESSING_32, "timeout_s": 5}
    cfg.update(overrides)
    return cfg


def run_weights(cfg: dict, out_dir: Path, **kwargs) -> subprocess.CompletedProcess:
    """The weights script, as the rule runs it, writing ``out_dir``/weights.pth and manifest.json."""
    return run_script("weights", "--weights", json.dumps(cfg), "--out-weights", str(out_dir / "weights.pth"),
                      "--out-manifest", str(out_dir / "manifest.json"), **kwargs)


def run_split(dataset: dict, out_dir: Path, **kwargs) -> subprocess.CompletedProcess:
    return run_script("split", "--dataset", json.dumps(dataset), "--out", str(out_dir / "split.csv"),
                      "--report", str(out_dir / "split.report.json"), "--threads", "1", **kwargs)


def train_args(split: Path, manifest: Path, out_dir: Path, options: dict, resume_dir: Path | None = None) -> list[str]:
    args = ["--split", str(split), "--manifest", str(manifest), "--options", json.dumps(options),
            "--out-checkpoint", str(out_dir / "model.pt"), "--out-history", str(out_dir / "history.csv"),
            "--out-info", str(out_dir / "train_info.json"), "--threads", "1"]
    if resume_dir is not None:
        args += ["--resume-dir", str(resume_dir)]
    return args


def start_script(name: str, *args: str, preexec_fn=None) -> subprocess.Popen:
    """Start one workflow script as :func:`helpers.run_script` runs it, without waiting for it."""
    cmd = [sys.executable, str(REPO / "workflow" / "scripts" / f"{name}.py"), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=preexec_fn)


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (hidden temporary files included)."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /<name> serves ``files[name]``; /truncated/<name> announces more bytes than it sends (half of
    them), /short/<name> one byte less than it announces; /unannounced/<name> sends half of it without a length;
    /hang/<name> accepts and never answers (until the server stops); anything else is a 404."""

    files: dict[str, bytes] = {}
    release: threading.Event  # set when the server stops: lets hanging requests end
    hanging: threading.Event  # set once a request hangs

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        name = parts[-1]
        if name not in self.files:
            self.send_error(404, "Not Found")
            return
        body = self.files[name]
        if parts[0] == "hang":
            self.hanging.set()
            self.release.wait(60)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if parts[0] in ("truncated", "short"):
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if parts[0] == "truncated" else body[:-1])  # then the connection closes
            return
        if parts[0] == "unannounced":  # no length said: the client reads to the end, which comes too soon
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server:
    def __init__(self, url: str, hanging: threading.Event):
        self.url, self.hanging = url, hanging


@contextlib.contextmanager
def http_server(files: dict[str, bytes]):
    """A real HTTP server on 127.0.0.1 (a free port) in a thread; yields a :class:`Server` (base URL,
    and an event set once a request hangs). See :class:`_Handler` for the routes."""
    release, hanging = threading.Event(), threading.Event()
    handler = type("Handler", (_Handler,), {"files": files, "release": release, "hanging": hanging})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{server.server_address[1]}", hanging)
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextlib.contextmanager
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never says a word: a hanging network."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


def split_and_weights(root: Path, per_class: int):
    """A split of 2 x ``per_class`` generated 32-px images (cat, dog) and random-init resnet18 weights with
    their manifest, under ``root``: SimpleNamespace(split=..., manifest=...)."""
    from types import SimpleNamespace

    from finetune.weights import write_manifest

    make_images(root / "data", {"cat": per_class, "dog": per_class})
    split = run_split({"format": "imagefolder", "path": str(root / "data")}, root / "split")
    assert split.returncode == 0, split.stdout
    digest = save_state_dict(root / "weights" / "weights.pth", "resnet18", 3)
    write_manifest(root / "weights" / "manifest.json", weights_file=root / "weights" / "weights.pth", arch="resnet18",
                   num_classes=3, classes=[], preprocessing=PREPROCESSING_32, sha256=digest, source={"kind": "test"})
    return SimpleNamespace(split=root / "split" / "split.csv", manifest=root / "weights" / "manifest.json")


def decode_split(split: Path, folder: Path, **kwargs) -> tuple[Path, Path]:
    """``split``'s images decoded at 32 px as the decode stage stores them, to ``folder``/images.npy and
    ``folder``/info.json (written again on each call): (images.npy, info.json), the pair train's ``--decoded``
    takes. ``kwargs`` go to ``write_decoded`` (``channel_stats_of="train"`` for pretrain)."""
    from finetune.store import write_decoded

    npy, info = folder / "images.npy", folder / "info.json"
    write_decoded(split, 32, 32, npy, info, log=lambda _: None, **kwargs)
    return npy, info


def job_pids(workdir: Path, script: str, env: str | None = None) -> list[int]:
    """The python processes running ``workflow/scripts/<script>`` in ``workdir``: the script among their
    arguments as one word (not the shell around them, whose command is one long word). ``env``: only those
    whose environment holds that ``NAME=value`` (e.g. ``RANK=1``: one of several training processes)."""
    path, cwd = str(REPO / "workflow" / "scripts" / script), os.path.realpath(workdir)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode() for a in (entry / "cmdline").read_bytes().split(b"\0")]
            if path not in argv[1:] or os.path.realpath(os.readlink(entry / "cwd")) != cwd:
                continue
            if env is None or env.encode() in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except (OSError, UnicodeDecodeError):
            continue  # ended meanwhile, or not ours to read
    return pids
