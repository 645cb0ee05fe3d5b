"""Acquire pretrained weights and describe them in a manifest.

Whatever the source (torchvision's hub, any URL, a local file, or a model pretrained here by the
``pretrain`` rule), the result is the same pair of files: a plain ``state_dict`` (``model.pth``)
and a JSON manifest holding its sha256, architecture, source classes and the preprocessing the
weights expect. The train rule trusts only that pair, after checking the hash.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .errors import WeightsError
from .fileio import atomic_path, read_json, sha256_of, write_json

# The keys of `weights:` each source reads (configcheck refuses the others, written) and those it cannot do
# without (the schema gives `arch` a default; weights_stage, which may run alone, also needs it).
WEIGHTS_KEYS = {
    "pretrain": ("arch",),
    "torchvision": ("torchvision", "mirror", "sha256", "timeout_s", "arch"),
    "url": ("url", "sha256", "timeout_s", "arch", "preprocessing", "classes"),
    "path": ("path", "sha256", "arch", "preprocessing", "classes"),
}
WEIGHTS_REQUIRED = {"url": ("url", "sha256", "preprocessing"), "path": ("path", "preprocessing")}

URL_SCHEMES = ("http", "https", "file")  # what urllib's downloader reads
MANIFEST_FORMAT = "finetune-weights/1"
DEFAULT_TIMEOUT_S = 60


def library_versions() -> dict:
    """torch's and torchvision's ``__version__`` (e.g. 2.14.1+cu130), without importing them where no one has yet:
    an import of torch takes seconds (~10 s on the GPU machine), and a job that needs no tensors should not pay it."""
    return {name: module_version(name) for name in ("torch", "torchvision")}


def module_version(name: str) -> str:
    """``name.__version__``, read from the package's ``version.py`` (where torch and torchvision keep it) unless the
    package is imported already; its distribution's version (without the local tag) where that file says nothing."""
    import importlib.metadata
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name].__version__
    spec = importlib.util.find_spec(name)  # finds the package without running it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", (Path(folder) / "version.py").read_text(), re.M)
        except OSError:
            continue
        if found:
            return found.group(1)
    return importlib.metadata.version(name)


def _without_wrapper_prefixes(state: dict) -> dict:
    """``state`` without the name every key starts with, for as long as one does: the attribute of a wrapper that
    holds the model (``module.`` of DataParallel and DistributedDataParallel, ``_orig_mod.`` of torch.compile,
    ``model.`` of a LightningModule, nested in any order). A classifier's own keys never share one: its output
    layer is a top-level child beside the others (every torchvision classifier's is)."""
    while state and all("." in key for key in state) and len({key.split(".", 1)[0] for key in state}) == 1:
        state = {key.split(".", 1)[1]: value for key, value in state.items()}
    return state


# Where training checkpoints keep the model's weights: torch's own tutorial ("model_state_dict"), Lightning and
# timm ("state_dict"), and others ("model", "net").
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net")
SAVE_STATE_DICT = "save the model's weights with torch.save(model.state_dict(), path) and use that file"


def load_state_dict(path: str | os.PathLike, origin: str | None = None) -> dict:
    """Load a state_dict saved by torch: plain, or inside a training checkpoint (:data:`CHECKPOINT_KEYS`), from a
    model wrapped by DataParallel, DistributedDataParallel or torch.compile (their key prefixes go).

    Only tensors are read (``weights_only``): a whole pickled model or a TorchScript archive is refused with
    what to save instead. ``origin`` names the file in messages (the URL or source path when ``path`` is a
    staging file).
    """
    import torch

    origin = origin or str(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsError(f"weights file not found: {origin}") from exc
    except Exception as exc:  # torch raises a zoo of errors for non-checkpoint files
        raise WeightsError(f"{origin} {_unreadable_because(path, exc)}") from exc
    for key in CHECKPOINT_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(hasattr(v, "shape") for v in obj.values()):
        held = f"its top-level keys are {', '.join(map(str, list(obj)[:8]))}" if isinstance(obj, dict) and obj else \
            f"it holds {'an empty mapping' if isinstance(obj, dict) else type(obj).__name__}"
        raise WeightsError(f"{origin} does not hold a state_dict (a mapping of parameter names to tensors), nor a "
                           f"checkpoint with one under {', '.join(CHECKPOINT_KEYS)}: {held}")
    return _without_wrapper_prefixes(obj)


def _what_file(head: bytes) -> str:
    """What a file that is no PyTorch file seems to be, from its first bytes ``head`` (for the message)."""
    if len(head) >= 8 and int.from_bytes(head[:8], "little") < 100_000_000 and head[8:9] == b"{":
        return ("it is a safetensors file (its JSON header), which finetune does not read; convert it with "
                "torch.save(safetensors.torch.load_file(path), 'weights.pth')")
    text = head.lstrip().lower()
    if text.startswith(b"<"):
        return "it starts as an HTML or XML page (a login or error page saved in its place?), not as saved weights"
    if not head:
        return "it is empty"
    if head.startswith(b"PK\x03\x04"):
        return ("it starts as the zip archive torch.save writes but is incomplete or damaged (a copy or download "
                "cut short?): copy or download it again")
    printable = head[:40].decode("latin-1")
    return f"its first bytes are {printable!r}, not those of a file torch.save writes (a zip archive or a pickle)"


def not_a_torch_file(path: str | os.PathLike) -> str | None:
    """What a file is where it does not begin as torch.save's files do (a zip archive, or a pickle: its old format);
    None where it does (one cut short or damaged inside is then what it is), or where it cannot be read."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError:
        return None
    return None if head.startswith((b"PK\x03\x04", b"\x80")) else _what_file(head)


def _not_weights(path: Path) -> str:
    """`` The file received: <what it seems to be>.`` for a download that is no file torch.save writes (a zip archive
    or a pickle): an HTML login or error page, say; else empty."""
    other = not_a_torch_file(path)
    return f" The file received: {other}." if other else ""


def _unreadable_because(path: str | os.PathLike, exc: Exception) -> str:
    """Why torch.load with weights_only refused a file, in the words a user can act on."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("/constants.pkl") for name in archive.namelist()):
                return f"is a TorchScript archive (torch.jit.save), not a state_dict: {SAVE_STATE_DICT}"
    else:
        with open(path, "rb") as handle:
            head = handle.read(512)
        if not head.startswith(b"\x80"):  # torch.save writes a zip archive, or (old format) a pickle (protocol >= 2)
            return f"is not a PyTorch file: {_what_file(head)}"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch colours parts of its messages
    if text.startswith("Weights only load failed"):
        return (f"holds pickled Python objects (a whole model saved with torch.save(model), say), which finetune does "
                f"not unpickle, as that runs code from the file: {SAVE_STATE_DICT}")
    return f"is not a readable PyTorch weights file: {text.splitlines()[0] if text else type(exc).__name__}"


def infer_num_classes(arch: str, state_dict: dict, origin: str) -> int:
    """Read the number of source classes from the output layer's weight in a state_dict."""
    from .models import build_architecture, find_output_layer

    head_name, head = find_output_layer(build_architecture(arch, 2))
    key = f"{head_name}.weight"
    if key not in state_dict:
        raise WeightsError(f"{origin} has no {key!r}: {_why_no_head(state_dict, head_name, head.weight.shape[1], arch)}")
    return int(state_dict[key].shape[0])


def _why_no_head(state_dict: dict, head_name: str, features: int, arch: str) -> str:
    """Why a state_dict lacks ``arch``'s output layer ``head_name`` (taking ``features`` inputs), as far as its keys
    tell, and what to do."""
    below = [k for k in state_dict if k.startswith(f"{head_name}.")]
    if below:  # a head of several layers (nn.Sequential(nn.Dropout(), nn.Linear(...)), say): fc.1.weight
        last = [k for k in below if k.endswith(".weight") and getattr(state_dict[k], "ndim", 0) == 2][-1:]
        fix = (f"model.{head_name} = model.{head_name}[-1] (its last Linear, which takes the backbone's {features} "
               "features)" if last and state_dict[last[0]].shape[1] == features else
               f"model.{head_name} = torch.nn.Linear({features}, <its classes>) (a head of several layers cannot be "
               "carried over, and the new one replaces it anyway)")
        return (f"its output layer is not one layer but {', '.join(below[:4])}; finetune replaces the output layer, but "
                f"reads the source classes from a single nn.Linear {head_name}: save the model with {fix} before "
                "torch.save(model.state_dict(), path)")
    groups: dict[str, list[str]] = {}
    for k in state_dict:
        groups.setdefault(k.split(".", 1)[0] if "." in k else "", []).append(k)
    holding = [g for g, keys in groups.items() if g and f"{g}.{head_name}.weight" in state_dict]
    if holding:  # the model under one attribute beside others: a LightningModule with a loss of its own, say
        others = [k for g, keys in groups.items() if g != holding[0] for k in keys]
        return (f"the model's weights are the keys that start with '{holding[0]}.', beside others ({', '.join(others[:4])}): a "
                f"training module's state with more than the model; save the model's own weights, "
                f"torch.save(module.{holding[0]}.state_dict(), path), and use that file")
    return (f"it is not a {arch} state_dict (first keys: {', '.join(list(state_dict)[:4])}). "
            "Set weights.arch to the architecture the weights were saved from")


def _check_sha256(path: Path, expected: str | None, origin: str, actual: str | None = None) -> str:
    actual = actual or sha256_of(path)
    if expected and actual.lower() != expected.lower():
        raise WeightsError(
            f"sha256 mismatch for {origin}: expected {expected.lower()}, got {actual} ({path.stat().st_size} bytes); "
            "the file was refused. Check weights.sha256, or the source if it should not have changed"
        )
    return actual


_READ_CHUNK = 1 << 20


def _fetch(url: str, out, timeout_s: float) -> tuple[str, int, int | None]:
    """Stream ``url`` into the open file ``out``: (sha256, bytes received, Content-Length or None)."""
    request = urllib.request.Request(url, headers={"User-Agent": "finetune (urllib)"})
    digest, received = hashlib.sha256(), 0
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # timeout: connect and every read
        length = response.headers.get("Content-Length")
        while chunk := response.read(_READ_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
    return digest.hexdigest(), received, int(length) if length and length.isdigit() else None


def download(url: str, destination: Path, sha256: str | None = None, hash_prefix: str | None = None,
             timeout_s: float = DEFAULT_TIMEOUT_S, key: str = "weights.url") -> str:
    """Download ``url`` to ``destination`` and verify it; return its sha256.

    The file appears at ``destination`` only once complete (as many bytes as the server announced)
    and verified (full ``sha256``, or torchvision's ``hash_prefix`` taken from the file name, as
    torch.hub checks it); a failure leaves nothing behind and an earlier ``destination`` unchanged.
    ``timeout_s`` bounds the connection and every read, so a server that stops answering fails
    the download instead of hanging it. ``key``: the config key that gave the URL, named in the messages.
    """
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in URL_SCHEMES:
        raise WeightsError(f"unsupported URL scheme in {url!r}: check {key}, which must begin with http://, https:// "
                           "or file://")
    with atomic_path(destination) as tmp:
        try:
            with open(tmp, "wb") as out:
                digest, received, announced = _fetch(url, out, timeout_s)
        except urllib.error.HTTPError as exc:
            raise WeightsError(f"download of {url} failed: HTTP {exc.code} {exc.reason}; check {key}") from exc
        except (TimeoutError, socket.timeout) as exc:
            raise WeightsError(
                f"download of {url} failed: no answer within {timeout_s:g} s (weights.timeout_s); "
                "the server is unreachable or hangs"
            ) from exc
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                reason = f"no answer within {timeout_s:g} s (weights.timeout_s)"
            raise WeightsError(f"download of {url} failed: {reason}; check {key} and the network") from exc
        except (http.client.HTTPException, ConnectionError) as exc:  # e.g. IncompleteRead, connection reset
            raise WeightsError(f"download of {url} failed: {type(exc).__name__}: {exc}") from exc
        if announced is not None and received != announced:
            expected = f"expected sha256 {sha256.lower()}, " if sha256 else ""
            raise WeightsError(
                f"download of {url} is truncated: received {received} of the {announced} bytes the server announced "
                f"({expected}got {digest} for what arrived); nothing was kept, rerun to try again"
            )
        # Without a length from the server a cut-off transfer shows only as a wrong hash: say it may be that.
        cut = "" if announced is not None else (" The server announced no length, so the transfer may have been cut "
                                                "short: rerun to try again.")
        page = _not_weights(tmp)  # a login or error page served in its place: no hash to pin
        cut = page + cut
        if hash_prefix and not digest.startswith(hash_prefix):
            advice = ("Check weights.mirror, where set" if page else "Another file under the official name (a mirror's "
                      "own weights) needs its sha256 in weights.sha256; else check weights.mirror, where set")
            raise WeightsError(
                f"hash mismatch for {url}: expected a sha256 starting with {hash_prefix} (from the file name), "
                f"got {digest} ({received} bytes); the file was refused. {advice}.{cut}"
            )
        try:
            _check_sha256(tmp, sha256, url, actual=digest)
        except WeightsError as exc:
            raise WeightsError(f"{exc}.{cut}" if cut else str(exc)) from None
    return digest


def torchvision_weights(enum_name: str):
    """Resolve ``'ResNet18_Weights.IMAGENET1K_V1'`` (or ``'ResNet18_Weights.DEFAULT'``) to the enum value."""
    import difflib

    import torchvision

    try:
        return torchvision.models.get_weight(enum_name)
    except (ValueError, KeyError, AttributeError) as exc:
        names = []
        for model_name in torchvision.models.list_models(module=torchvision.models):
            try:
                enum = torchvision.models.get_model_weights(model_name)
            except Exception:
                continue
            names.extend([str(w) for w in enum] + [f"{enum.__name__}.DEFAULT"])
        names = sorted(set(names))
        family = enum_name.split(".")[0]
        same_enum = [n for n in names if n.split(".")[0] == family]
        similar = same_enum or [n for n in names if n.lower().startswith(family.lower()[:6])]
        lower = {n.lower(): n for n in names}
        wanted = enum_name.lower() if "." in enum_name else f"{enum_name.lower()}_weights.default"
        close = [lower[n] for n in difflib.get_close_matches(wanted, list(lower), n=1, cutoff=0.85)]
        hint = ", ".join(similar or names[:12] + ["..."])
        guess = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise WeightsError(
            f"unknown torchvision weights {enum_name!r} (weights.torchvision){guess}; valid names include: {hint}"
        ) from exc


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


def hub_checkpoints_dir() -> Path:
    """torch.hub's download folder, found as ``torch.hub.get_dir()`` finds it (without importing torch):
    ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub``; then ``checkpoints``."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def _from_hub_cache(file_name: str, destination: Path, sha256: str | None, hash_prefix: str | None,
                    log) -> str | None:
    """The file of torch.hub's cache with this name, copied to ``destination`` where it passes the same check as a
    download (the full ``sha256``, else the name's hash prefix): its sha256; None where there is none or it fails
    (said: then it is downloaded). The cache is only read, never written."""
    cached = hub_checkpoints_dir() / file_name
    if not cached.is_file():
        return None
    try:
        digest = sha256_of(cached)
        if (sha256 and digest != sha256.lower()) or (not sha256 and hash_prefix and not digest.startswith(hash_prefix)):
            wanted = f"sha256 {sha256.lower()}" if sha256 else f"a sha256 starting with {hash_prefix}"
            log(f"note: {cached} (torch.hub's cache) has sha256 {digest}, not {wanted}: downloading instead")
            return None
        with atomic_path(destination) as tmp:
            shutil.copyfile(cached, tmp)
            _check_sha256(tmp, digest, str(cached))  # a file changed while copied is refused
    except (OSError, WeightsError) as exc:  # unreadable (a shared cache's permissions), or changed meanwhile
        log(f"note: {cached} (torch.hub's cache) cannot be used ({exc}): downloading instead")
        return None
    log(f"taken from torch.hub's cache: {cached} (sha256 checked), nothing downloaded")
    return digest


def fetch_torchvision(enum_name: str, destination: Path, mirror: str | None = None, sha256: str | None = None,
                      timeout_s: float = DEFAULT_TIMEOUT_S, log=print) -> dict:
    """torchvision weights by enum name, with torchvision's hash check (or a full sha256 when given).

    ``mirror`` replaces scheme and host of the official URL (``https://download.pytorch.org``) with
    a private mirror's base URL, keeping the path. A file of that name in torch.hub's cache that passes the same
    check is copied instead (:func:`_from_hub_cache`): weights torchvision downloaded before, on a machine
    without the internet.
    """
    weights_enum = torchvision_weights(enum_name)
    url = weights_enum.url
    if mirror:
        parsed = urllib.parse.urlparse(url)
        url = mirror.rstrip("/") + parsed.path
    # torchvision's own check: the file name ends in the first hex digits of its sha256.
    file_name = Path(urllib.parse.urlparse(weights_enum.url).path).name
    hash_prefix = None if sha256 else Path(file_name).stem.rsplit("-", 1)[-1]
    key = "weights.mirror (the official file's path under it)" if mirror else "weights.torchvision"
    source = {"kind": "torchvision", "name": str(weights_enum), "url": url}
    digest = _from_hub_cache(file_name, destination, sha256, hash_prefix, log)
    if digest is None:
        digest = download(url, destination, sha256=sha256, hash_prefix=hash_prefix, timeout_s=timeout_s, key=key)
    else:
        source["cache"] = str(hub_checkpoints_dir() / file_name)
    return {
        "arch": torchvision_arch(weights_enum),
        "classes": list(weights_enum.meta.get("categories") or []),
        "preprocessing": preprocessing_from_torchvision(weights_enum),
        "sha256": digest,
        "source": source,
    }


def copy_local(path: str, destination: Path, sha256: str | None = None) -> str:
    source = Path(path)
    if source.is_dir():
        raise WeightsError(f"weights file {source} is a folder: name the weights file in it")
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
                f"{weights_file} does not match its manifest {file}: sha256 is {actual}, manifest says {manifest['sha256']} "
                "(replaced or changed after the weights job published it): publish them again with "
                "`snakemake --forcerun weights`"
            )
    return manifest
