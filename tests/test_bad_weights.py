"""Bad pretrained weights (issue 5): refused downloads, files of another architecture, manifests that
disagree with their file. Downloads come from a real HTTP server on 127.0.0.1; every case runs the
real weights (or train) script and checks that an earlier good result is still there, byte for byte,
with no partial file beside it."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest

from faults import (http_server, make_images, run_split, run_weights, save_state_dict, sha256, snapshot,
                    start_script, train_args, weights_config)
from helpers import jobs_run, run_script, run_snakemake, tiny_config

TORCHVISION_RESNET18 = "ResNet18_Weights.IMAGENET1K_V1"


@pytest.fixture(scope="module")
def good_weights(tmp_path_factory) -> Path:
    """A real resnet18 state_dict (3 source classes, random init)."""
    path = tmp_path_factory.mktemp("source") / "good.pth"
    save_state_dict(path, "resnet18", 3)
    return path


@pytest.fixture(scope="module")
def previous(tmp_path_factory, good_weights) -> Path:
    """An earlier good result of the weights script: weights.pth and manifest.json."""
    out = tmp_path_factory.mktemp("previous")
    result = run_weights(weights_config(path=str(good_weights)), out)
    assert result.returncode == 0, result.stdout
    return out


@pytest.fixture
def out(previous, tmp_path) -> Path:
    """A private copy of the earlier good result, for a run that must fail without touching it."""
    destination = tmp_path / "weights"
    shutil.copytree(previous, destination)
    return destination


@pytest.fixture(scope="module")
def server(good_weights):
    files = {"good.pth": good_weights.read_bytes(), "resnet18-f37072fd.pth": b"not the real resnet18 weights\n",
             "login.pth": b"<html><body>Login required</body></html>\n"}
    with http_server(files) as running:
        yield running


def assert_refused(result, out: Path, before: dict, *fragments: str) -> str:
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
    message = next(line for line in result.stdout.splitlines() if line.startswith("error: "))
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert snapshot(out) == before, "the earlier weights.pth/manifest.json changed, or a partial file was left"
    return message


def test_url_download_that_works(server, good_weights, tmp_path):
    """The control for the refusals below: the same server and script accept a good download."""
    url = f"{server.url}/good.pth"
    result = run_weights(weights_config(source="url", url=url, sha256=sha256(good_weights)), tmp_path)
    assert result.returncode == 0, result.stdout
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["sha256"] == sha256(tmp_path / "weights.pth") == sha256(good_weights)
    assert manifest["source"] == {"kind": "url", "url": url} and manifest["num_classes"] == 3


@pytest.mark.parametrize("case", ["sha256_mismatch", "truncated", "one_byte_short", "cut_without_length", "http_404",
                                  "hanging_server", "login_page"])
def test_refused_download_keeps_the_previous_weights(server, good_weights, out, case):
    good_sha = sha256(good_weights)
    other_sha = "0123456789abcdef" * 4
    url, sha, timeout = {
        "sha256_mismatch": (f"{server.url}/good.pth", other_sha, 5),
        "truncated": (f"{server.url}/truncated/good.pth", good_sha, 5),
        "one_byte_short": (f"{server.url}/short/good.pth", good_sha, 5),
        "cut_without_length": (f"{server.url}/unannounced/good.pth", good_sha, 5),
        "http_404": (f"{server.url}/no-such-file.pth", good_sha, 5),
        "hanging_server": (f"{server.url}/hang/good.pth", good_sha, 1),
        "login_page": (f"{server.url}/login.pth", good_sha, 5),
    }[case]
    before = snapshot(out)
    started = time.monotonic()
    result = run_weights(weights_config(source="url", url=url, sha256=sha, timeout_s=timeout), out)
    expected = {
        "sha256_mismatch": [f"sha256 mismatch for {url}: expected {other_sha}, got {good_sha}", "refused"],
        "truncated": [f"download of {url} is truncated: received", f"expected sha256 {good_sha}, got "],
        "one_byte_short": [f"download of {url} is truncated: received {good_weights.stat().st_size - 1} of the "
                           f"{good_weights.stat().st_size} bytes the server announced"],
        # only the hash says so: the message says it may be a cut-off transfer, not only a wrong pin
        "cut_without_length": [f"sha256 mismatch for {url}: expected {good_sha}",
                               "The server announced no length, so the transfer may have been cut short: rerun"],
        "http_404": [f"download of {url} failed: HTTP 404", "check weights.url"],
        "hanging_server": [f"download of {url} failed: no answer within 1 s (weights.timeout_s)"],
        # a page served in the file's place: said, not only its hash (whose pin would not help)
        "login_page": [f"sha256 mismatch for {url}: expected {good_sha}",
                       "The file received: it starts as an HTML or XML page (a login or error page saved in its place?)"],
    }[case]
    assert_refused(result, out, before, *expected)
    if case == "hanging_server":
        assert time.monotonic() - started < 60


def test_torchvision_hash_prefix_refused_from_a_mirror(server, out):
    """torchvision weights through weights.mirror: the file's sha256 must start with the hash in its name."""
    before = snapshot(out)
    cfg = weights_config(source="torchvision", torchvision=TORCHVISION_RESNET18, mirror=server.url)
    result = run_weights(cfg, out)
    url = f"{server.url}/models/resnet18-f37072fd.pth"
    assert_refused(result, out, before, f"hash mismatch for {url}: expected a sha256 starting with f37072fd", "got ")


def test_a_url_without_a_scheme_is_refused_at_start_naming_its_key(server, out):
    """`127.0.0.1:8000/w.pth` (no http://) passed the start and failed in the weights job, after Snakemake had removed
    the earlier weights, naming no key."""
    from finetune.configcheck import config_problems
    from helpers import REPO

    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    bare = server.url.removeprefix("http://")
    for key, weights in (("url", weights_config(source="url", url=f"{bare}/good.pth", sha256="ab" * 32)),
                         ("mirror", weights_config(source="torchvision", torchvision=TORCHVISION_RESNET18, mirror=bare))):
        problems = config_problems({"weights": weights}, schema)
        assert (f"weights.{key}: {weights[key]!r} is not a URL the downloader reads: begin it with http://, https:// "
                "or file://") in problems, problems
        before = snapshot(out)
        assert_refused(run_weights(weights, out), out, before, "unsupported URL scheme in", f"check weights.{key}")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_stopped_during_a_download_leaves_no_partial_file(server, good_weights, out, stop):
    """SIGTERM (or SIGHUP: the terminal that ran it closed) while the download hangs: exit 143, the earlier weights
    untouched, nothing half-written."""
    before = snapshot(out)
    cfg = weights_config(source="url", url=f"{server.url}/hang/good.pth", sha256=sha256(good_weights), timeout_s=60)
    server.hanging.clear()
    # SIGHUP as a closed terminal sends it: not ignored (a run under nohup ignores it, and the job goes on)
    process = start_script("weights", "--weights", json.dumps(cfg), "--out-weights", str(out / "weights.pth"),
                           "--out-manifest", str(out / "manifest.json"),
                           preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        assert server.hanging.wait(120), "the download never reached the server"
        process.send_signal(stop)
        stdout, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, stdout
    assert f"stopped by {stop.name}" in stdout
    assert snapshot(out) == before


def test_state_dict_of_another_architecture(good_weights, out):
    before = snapshot(out)
    result = run_weights(weights_config(path=str(good_weights), arch="resnet34"), out)
    assert_refused(result, out, before, f"the weights in {good_weights} are not a resnet34 state_dict",
                   "parameter(s) missing (layer1.2.", "Set weights.arch")


def test_an_unknown_architecture_is_refused_at_start_from_torchvision_s_own_list(tmp_path):
    """Snakemake does not import torchvision (seconds at every start): the names come from its source, and must be
    exactly the classification models torchvision itself lists. A misspelt arch stopped only the pretrain job."""
    import torchvision

    from finetune.configcheck import torchvision_architectures

    assert torchvision_architectures() == sorted(torchvision.models.list_models(module=torchvision.models))
    config = tiny_config(tmp_path, weights={"arch": "resnet19"})
    result = run_snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0
    assert "weights.arch: unknown architecture 'resnet19' (did you mean resnet18" in result.stdout, result.stdout[-2000:]
    assert not (tmp_path / "resources").exists()


def test_weights_of_another_channel_order_are_refused_at_start(tmp_path):
    """docs/data-and-weights.md: `preprocessing.channels` says the weights' channel order, and RGB is the only one read:
    BGR weights (Caffe's) would be fed RGB images, every prediction made from swapped colours, nothing said."""
    preprocessing = {"resize_size": 36, "crop_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "channels": "BGR"}
    config = tiny_config(tmp_path, replace={"weights": {"source": "path", "path": str(tmp_path / "w.pth"),
                                                        "arch": "resnet18", "preprocessing": preprocessing}})
    result = run_snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0
    assert "weights.preprocessing.channels: 'BGR' is not allowed; use one of RGB" in result.stdout, result.stdout[-2000:]
    assert not (tmp_path / "resources").exists()


def test_unknown_architecture_lists_the_valid_ones(good_weights, out):
    before = snapshot(out)
    result = run_weights(weights_config(path=str(good_weights), arch="resnet19"), out)
    message = assert_refused(result, out, before, "unknown architecture 'resnet19' (weights.arch)", "did you mean resnet18")
    for name in ("resnet18", "resnet50", "mobilenet_v3_small", "vit_b_16"):
        assert name in message


def test_unknown_torchvision_weights_lists_the_valid_ones(out):
    before = snapshot(out)
    result = run_weights(weights_config(source="torchvision", torchvision="ResNet18_Weights.IMAGENET9K"), out)
    assert_refused(result, out, before, "unknown torchvision weights 'ResNet18_Weights.IMAGENET9K' (weights.torchvision)",
                   "valid names include: ResNet18_Weights.DEFAULT, ResNet18_Weights.IMAGENET1K_V1")


def test_manifest_that_disagrees_with_its_file(previous, tmp_path):
    """Someone edits the sha256 in manifest.json (or swaps weights.pth): train refuses both."""
    weights = tmp_path / "weights"
    shutil.copytree(previous, weights)
    manifest = json.loads((weights / "manifest.json").read_text())
    real_sha, manifest["sha256"] = manifest["sha256"], "f" * 64
    (weights / "manifest.json").write_text(json.dumps(manifest))
    make_images(tmp_path / "data", {"cat": 5, "dog": 5})
    assert run_split({"format": "imagefolder", "path": str(tmp_path / "data")}, tmp_path / "split").returncode == 0
    run = tmp_path / "run"
    result = run_script("train", *train_args(tmp_path / "split" / "split.csv", weights / "manifest.json", run,
                                             {"epochs": 1, "batch_size": 4, "device": "cpu"}))
    assert result.returncode == 1, result.stdout
    assert (f"error: {weights / 'weights.pth'} does not match its manifest {weights / 'manifest.json'}: "
            f"sha256 is {real_sha}, manifest says {'f' * 64} (replaced or changed after the weights job published "
            "it): publish them again with `snakemake --forcerun weights`") in result.stdout
    assert not run.exists() or not any(run.iterdir())


@pytest.mark.slow
def test_failed_download_through_snakemake(server, good_weights, tmp_path):
    """The user's view: snakemake stops at the weights rule, its log holds the one-line reason, and no
    weights file is left for a later run to trust."""
    url = f"{server.url}/no-such-file.pth"
    weights = weights_config(source="url", url=url, sha256=sha256(good_weights))
    config = tiny_config(tmp_path, replace={"weights": weights})
    # (a flag between --configfile and the target, or argparse reads the target as a second config file)
    result = run_snakemake(tmp_path, config, "--nolock", "resources/weights/manifest.json", check=False, timeout=300)
    assert result.returncode != 0
    assert jobs_run(result.stdout) == ["weights"]
    assert "results/logs/weights.log" in result.stdout
    log = (tmp_path / "results" / "logs" / "weights.log").read_text()
    assert f"error: download of {url} failed: HTTP 404" in log
    assert not (tmp_path / "resources" / "weights" / "weights.pth").exists()
    assert [p.name for p in (tmp_path / "resources" / "weights").glob("*")] == []


@pytest.mark.parametrize("wrapper", ["DataParallel", "compile", "compile+DataParallel+checkpoint", "tutorial-checkpoint",
                                     "lightning-checkpoint"])
def test_weights_saved_from_a_wrapped_model_are_read_as_the_plain_model(tmp_path, wrapper):
    """A state_dict saved from a model wrapped for training (keys `module.…`, `_orig_mod.…`, a training
    checkpoint `{"model": …, "epoch": …}`): the weights job publishes it, and what the jobs load is the
    plain model's own state_dict, tensor for tensor."""
    import torch

    from finetune.models import build_architecture
    from finetune.weights import load_state_dict

    torch.manual_seed(0)
    model = build_architecture("resnet18", 3)
    wrapped = model
    if "compile" in wrapper:
        wrapped = torch.compile(wrapped)
    if "DataParallel" in wrapper:
        wrapped = torch.nn.DataParallel(wrapped)
    saved = wrapped.state_dict()
    assert "-checkpoint" in wrapper or all(k.startswith(("module.", "_orig_mod.")) for k in saved), \
        "the wrapper prefixes every key"
    if wrapper == "tutorial-checkpoint":  # torch's tutorial "Saving and loading a general checkpoint"
        saved = {"epoch": 7, "model_state_dict": model.state_dict(), "optimizer_state_dict": {"state": {}}, "loss": 0.5}
    elif wrapper == "lightning-checkpoint":  # a LightningModule holding the network as self.model, as saved by Lightning
        holder = torch.nn.Module()
        holder.model = model
        saved = {"epoch": 7, "global_step": 70, "pytorch-lightning_version": "2.5.0", "state_dict": holder.state_dict()}
    elif "checkpoint" in wrapper:
        saved = {"model": saved, "epoch": 7}
    torch.save(saved, tmp_path / "trained.pth")
    result = run_weights(weights_config(path=str(tmp_path / "trained.pth")), tmp_path / "out")
    assert result.returncode == 0, result.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["num_classes"] == 3 and manifest["sha256"] == sha256(tmp_path / "trained.pth")
    loaded = load_state_dict(tmp_path / "out" / "weights.pth")
    plain = model.state_dict()
    assert list(loaded) == list(plain)
    assert all(torch.equal(loaded[k], plain[k]) for k in plain)


@pytest.mark.parametrize("version_record", [False, True], ids=["rebuilt-dict", "state-dict-with-its-version-record"])
def test_a_state_dict_without_batchnorm_step_counters_is_read_with_them_at_zero(tmp_path, version_record):
    """Files of older torch or of conversion scripts lack BatchNorm's num_batches_tracked buffers. A rebuilt dict torch
    itself loads strictly (the counters start at 0); one that keeps the state_dict's version record torch refuses,
    and the weights job reads it alike: every other tensor as in the file, the counters 0."""
    import torch
    import torchvision

    from finetune.models import build_architecture, load_source_state
    from finetune.weights import load_state_dict

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    model.train()(torch.randn(2, 3, 32, 32))  # the counters move off 0 in the source
    state = model.state_dict()
    for key in [k for k in state if k.endswith("num_batches_tracked")]:
        del state[key]  # keeps the state_dict's version record (_metadata)
    if not version_record:
        state = {k: v for k, v in state.items()}
    torch.save(state, tmp_path / "old.pth")
    reference = torchvision.models.resnet18(num_classes=3)
    if version_record:
        with pytest.raises(RuntimeError, match="num_batches_tracked"):
            reference.load_state_dict(torch.load(tmp_path / "old.pth"), strict=True)
    else:
        reference.load_state_dict(torch.load(tmp_path / "old.pth"), strict=True)  # torch's own verdict: it loads
    result = run_weights(weights_config(path=str(tmp_path / "old.pth")), tmp_path / "out")
    assert result.returncode == 0, result.stdout
    loaded = load_state_dict(tmp_path / "out" / "weights.pth")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    target = build_architecture("resnet18", 3)
    load_source_state(target, loaded, "old.pth", arch="resnet18")
    assert all(torch.equal(target.state_dict()[k], v) for k, v in state.items())
    assert [int(v) for k, v in target.state_dict().items() if k.endswith("num_batches_tracked")] == [0] * 20


@pytest.mark.parametrize("kind", ["lightning-with-loss-weights", "sequential-head", "mlp-head"])
def test_a_state_dict_with_more_than_the_model_or_a_head_of_several_layers_says_which(out, tmp_path, kind):
    """Not a wrong architecture: a LightningModule's state with the model under `model.` beside its loss's class
    weights, or a resnet18 whose head was nn.Sequential(Dropout, Linear). The message says what the keys show and
    what to save, not to change weights.arch; the earlier weights stay."""
    import torch

    from finetune.models import build_architecture

    model = build_architecture("resnet18", 3)
    if kind == "sequential-head":
        model.fc = torch.nn.Sequential(torch.nn.Dropout(), model.fc)
        saved, fragments = model.state_dict(), ("has no 'fc.weight': its output layer is not one layer but fc.1.weight",
                                                "model.fc = model.fc[-1] (its last Linear, which takes the backbone's 512")
    elif kind == "mlp-head":  # its last Linear takes 256 features, not the backbone's 512: it cannot stand alone
        model.fc = torch.nn.Sequential(torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 3))
        saved, fragments = model.state_dict(), ("its output layer is not one layer but fc.0.weight",
                                                "model.fc = torch.nn.Linear(512, <its classes>)")
    else:
        holder = torch.nn.Module()
        holder.model, holder.criterion = model, torch.nn.CrossEntropyLoss(weight=torch.ones(3))
        saved = {"epoch": 7, "state_dict": holder.state_dict()}
        fragments = ("the model's weights are the keys that start with 'model.', beside others (criterion.weight)",
                     "torch.save(module.model.state_dict(), path)")
    torch.save(saved, tmp_path / "trained.pth")
    before = snapshot(out)
    message = assert_refused(run_weights(weights_config(path=str(tmp_path / "trained.pth")), out), out, before, *fragments)
    assert "weights.arch" not in message


@pytest.mark.parametrize("kind", ["whole-model", "torchscript", "no-weights"])
def test_a_file_that_is_no_state_dict_is_refused_saying_what_to_save(tmp_path, kind):
    """A whole model pickled with torch.save(model) (unpickling it would run code from the file), a TorchScript
    archive, a checkpoint without weights: each refused with what it is and what to save, nothing published."""
    import torch

    from finetune.models import build_architecture

    model, file = build_architecture("resnet18", 3), tmp_path / "given.pth"
    if kind == "whole-model":
        torch.save(model, file)
    elif kind == "torchscript":
        torch.jit.save(torch.jit.trace(model.eval(), torch.zeros(1, 3, 32, 32)), file)
    else:
        torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, file)
    result = run_weights(weights_config(path=str(file)), tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout
    expected = {"whole-model": f"error: {file} holds pickled Python objects (a whole model saved with torch.save(model), "
                               "say), which finetune does not unpickle, as that runs code from the file: save the model's "
                               "weights with torch.save(model.state_dict(), path) and use that file",
                "torchscript": f"error: {file} is a TorchScript archive (torch.jit.save), not a state_dict: save the "
                               "model's weights with torch.save(model.state_dict(), path)",
                "no-weights": f"error: {file} does not hold a state_dict (a mapping of parameter names to tensors), nor a "
                              "checkpoint with one under state_dict, model_state_dict, model, net: its top-level keys are "
                              "epoch, optimizer"}[kind]
    assert expected in result.stdout, result.stdout
    assert "\x1b[" not in result.stdout
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("kind", ["safetensors", "html", "text", "cut-short"])
def test_a_file_that_is_no_pytorch_file_says_what_it_seems_to_be(tmp_path, kind):
    """A safetensors file (a length, then a JSON header), an HTML login page saved in place of the weights, a text
    file: named for what they are, not as pickled objects or by a bare byte from torch."""
    import struct

    file = tmp_path / "given.pth"
    if kind == "safetensors":
        header = json.dumps({"fc.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
        file.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    elif kind == "cut-short":  # a torch.save file copied or downloaded only in part
        import torch

        torch.save({"fc.weight": torch.zeros(64, 64)}, file)
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    elif kind == "html":
        file.write_bytes(b"\n<!DOCTYPE html><html><head><title>Sign in</title></head></html>\n")
    else:
        file.write_text("epoch,loss\n1,0.5\n")
    result = run_weights(weights_config(path=str(file)), tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout
    expected = {"safetensors": "it is a safetensors file (its JSON header), which finetune does not read; convert it",
                "html": "it starts as an HTML or XML page (a login or error page saved in its place?)",
                "text": "its first bytes are 'epoch,loss\\n1,0.5\\n', not those of a file torch.save writes",
                "cut-short": "it starts as the zip archive torch.save writes but is incomplete or damaged"}[kind]
    assert f"error: {file} is not a PyTorch file: {expected}" in result.stdout, result.stdout
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_weights_path_that_is_a_folder_says_so_not_that_it_is_missing(tmp_path):
    """`weights.path` naming the folder that holds the file: "weights file not found" named a path that exists."""
    folder = tmp_path / "models"
    folder.mkdir()
    result = run_weights(weights_config(path=str(folder)), tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout
    assert f"error: weights file {folder} is a folder: name the weights file in it" in result.stdout, result.stdout
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
