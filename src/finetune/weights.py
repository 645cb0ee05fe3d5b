"""Acquire pretrained weights and describe them in a manifest.

Whatever the source (torchvision's hub, any URL, a local file, or a model pretrained here by the
``pretrain`` rule), the result is the same pair of files: a plain ``state_dict`` (``model.pth``)
and a JSON manifest holding its sha256, architecture, source classes and the preprocessing the
weights expect. The train rule trusts only that pair, after checking the hash.
"""

from __future__ import annotations

import os
import shutil
import socket
import urllib.error
import urllib.parse
from pathlib import Path

from .errors import WeightsError
from .fileio import atomic_path, read_json, sha256_of, write_json

MANIFEST_FORMAT = "finetune-weights/1"
DEFAULT_TIMEOUT_S = 60


def library_versions() -> dict:
    import torch
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__}


def load_state_dict(path: str | os.PathLike) -> dict:
    """Load a state_dict saved by torch (plain, or wrapped as ``{'state_dict': ...}``/``{'model': ...}``)."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsError(f"weights file not found: {path}") from exc
    except Exception as exc:  # torch raises a zoo of errors for non-checkpoint files
        raise WeightsError(f"{path} is not a readable PyTorch weights file: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(hasattr(v, "shape") for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state_dict (a mapping of parameter names to tensors)")
    return obj


def infer_num_classes(arch: str, state_dict: dict, origin: str) -> int:
    """Read the number of source classes from the output layer's weight in a state_dict."""
    from .models import build_architecture, find_output_layer

    head_name, _ = find_output_layer(build_architecture(arch, 2))
    key = f"{head_name}.weight"
    if key not in state_dict:
        raise WeightsError(
            f"{origin} has no {key!r}: it is not a {arch} state_dict (first keys: {', '.join(list(state_dict)[:4])})"
        )
    return int(state_dict[key].shape[0])


def _check_sha256(path: Path, expected: str | None, origin: str) -> str:
    actual = sha256_of(path)
    if expected and actual.lower() != expected.lower():
        raise WeightsError(f"sha256 mismatch for {origin}: expected {expected.lower()}, got {actual}")
    return actual


def download(url: str, destination: Path, sha256: str | None = None, hash_prefix: str | None = None,
             timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """Download ``url`` to ``destination`` with torch.hub's downloader (the one torchvision uses).

    The file appears at ``destination`` only once complete and verified (full ``sha256``, or
    torchvision's ``hash_prefix`` taken from the file name); a failure leaves nothing behind.
    Returns the file's sha256.
    """
    from torch.hub import download_url_to_file

    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise WeightsError(f"unsupported URL scheme in {url!r}: use http(s)://")
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # torch.hub's urlopen has no timeout argument
    try:
        with atomic_path(destination) as tmp:
            try:
                download_url_to_file(url, str(tmp), hash_prefix=hash_prefix, progress=False)
            except urllib.error.HTTPError as exc:
                raise WeightsError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
            except (urllib.error.URLError, TimeoutError, socket.timeout) as exc:
                reason = getattr(exc, "reason", exc)
                raise WeightsError(f"download of {url} failed: {reason} (timeout {timeout_s:g} s)") from exc
            except RuntimeError as exc:  # torch.hub: 'invalid hash value (expected ..., got ...)'
                raise WeightsError(f"download of {url} refused: {exc}") from exc
            except OSError as exc:  # connection reset, incomplete read of a truncated body
                raise WeightsError(f"download of {url} failed: {exc}") from exc
            digest = _check_sha256(tmp, sha256, url)
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return digest


def torchvision_weights(enum_name: str):
    """Resolve ``'ResNet18_Weights.IMAGENET1K_V1'`` (or ``'ResNet18_Weights.DEFAULT'``) to the enum value."""
    import torchvision

    try:
        return torchvision.models.get_weight(enum_name)
    except (ValueError, KeyError, AttributeError) as exc:
        names = []
        for model_name in torchvision.models.list_models(module=torchvision.models):
            try:
                names.extend(str(w) for w in torchvision.models.get_model_weights(model_name))
            except Exception:
                continue
        hint = ", ".join(n for n in names if n.lower().startswith(enum_name.split(".")[0].lower()[:6])) or ", ".join(names[:12]) + ", ..."
        raise WeightsError(f"unknown torchvision weights {enum_name!r}; valid names include: {hint}") from exc


def torchvision_arch(weights_enum) -> str:
    """The torchvision model name a weights enum belongs to (``ResNet18_Weights`` -> ``resnet18``)."""
    import torchvision

    for name in torchvision.models.list_models(module=torchvision.models):
        try:
            if type(weights_enum) is torchvision.models.get_model_weights(name):
                return name
        except Exception:
            continue
    raise WeightsError(f"no torchvision model uses weights {weights_enum}")


def preprocessing_from_torchvision(weights_enum) -> dict:
    transform = weights_enum.transforms()
    return {
        "resize_size": int(transform.resize_size[0]),
        "crop_size": int(transform.crop_size[0]),
        "mean": [float(v) for v in transform.mean],
        "std": [float(v) for v in transform.std],
        "interpolation": str(transform.interpolation.value),
        "channels": "RGB",
    }


def fetch_torchvision(enum_name: str, destination: Path, mirror: str | None = None, sha256: str | None = None,
                      timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """torchvision weights by enum name, with torchvision's hash check (or a full sha256 when given).

    ``mirror`` replaces scheme and host of the official URL (``https://download.pytorch.org``) with
    a private mirror's base URL, keeping the path.
    """
    weights_enum = torchvision_weights(enum_name)
    url = weights_enum.url
    if mirror:
        parsed = urllib.parse.urlparse(url)
        url = mirror.rstrip("/") + parsed.path
    # torchvision's own check: the file name ends in the first hex digits of its sha256.
    stem = Path(urllib.parse.urlparse(weights_enum.url).path).stem
    hash_prefix = None if sha256 else stem.rsplit("-", 1)[-1]
    digest = download(url, destination, sha256=sha256, hash_prefix=hash_prefix, timeout_s=timeout_s)
    return {
        "arch": torchvision_arch(weights_enum),
        "classes": list(weights_enum.meta.get("categories") or []),
        "preprocessing": preprocessing_from_torchvision(weights_enum),
        "sha256": digest,
        "source": {"kind": "torchvision", "name": str(weights_enum), "url": url},
    }


def copy_local(path: str, destination: Path, sha256: str | None = None) -> str:
    source = Path(path)
    if not source.is_file():
        raise WeightsError(f"weights file not found: {source}")
    with atomic_path(destination) as tmp:
        shutil.copyfile(source, tmp)
        return _check_sha256(tmp, sha256, str(source))


def write_manifest(path: Path, *, weights_file: Path, arch: str, num_classes: int, classes: list,
                   preprocessing: dict, sha256: str, source: dict) -> dict:
    manifest = {
        "format": MANIFEST_FORMAT,
        "file": weights_file.name,
        "sha256": sha256,
        "arch": arch,
        "num_classes": num_classes,
        "classes": classes,
        "preprocessing": preprocessing,
        "source": source,
        **library_versions(),
    }
    write_json(path, manifest)
    return manifest


def read_manifest(path: str | os.PathLike, verify_file: bool = True) -> dict:
    """Read a weights manifest and (by default) check that its weights file matches its sha256."""
    file = Path(path)
    try:
        manifest = read_json(file)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read weights manifest {file}: {exc}") from exc
    required = ("file", "sha256", "arch", "num_classes", "preprocessing")
    missing = [k for k in required if k not in manifest]
    if missing:
        raise WeightsError(f"weights manifest {file} lacks {', '.join(missing)}")
    weights_file = file.parent / manifest["file"]
    manifest["path"] = str(weights_file)
    if verify_file:
        if not weights_file.is_file():
            raise WeightsError(f"weights manifest {file} names {weights_file}, which does not exist")
        actual = sha256_of(weights_file)
        if actual != manifest["sha256"]:
            raise WeightsError(
                f"{weights_file} does not match its manifest {file}: sha256 is {actual}, manifest says {manifest['sha256']}"
            )
    return manifest
