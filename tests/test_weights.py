"""Acquiring weights from torchvision (via a mirror), a URL and a local path, against a real
HTTP server on 127.0.0.1: the real download code, its hash checks, the manifest."""

import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import torch
import torchvision

from finetune.models import build_architecture
from helpers import REPO, run_script
from weight_server import serve_folder

# SqueezeNet 1.1: a real torchvision architecture small enough to serve (5 MB), and one whose
# output layer is a 1x1 convolution, not an nn.Linear.
ENUM = "SqueezeNet1_1_Weights.IMAGENET1K_V1"
FILE_NAME = "squeezenet1_1-b8a52dc0.pth"  # the official file name: its sha256 must start with b8a52dc0


def sha256(path) -> str:
    """Computed here with hashlib, not with the code's own helper."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mirror")
    (folder / "models").mkdir()
    torch.manual_seed(0)
    state = build_architecture("squeezenet1_1", 1000).state_dict()
    torch.save(state, folder / "models" / FILE_NAME)
    with serve_folder(folder) as base_url:
        yield {"url": base_url, "file": folder / "models" / FILE_NAME, "sha256": sha256(folder / "models" / FILE_NAME)}


def fetch(tmp_path, weights_cfg, env=None):
    out = tmp_path / "out"
    result = run_script("weights", "--weights", json.dumps(weights_cfg), "--out-weights", str(out / "weights.pth"),
                        "--out-manifest", str(out / "manifest.json"), env=env)
    return result, out


def test_torchvision_weights_from_a_mirror_with_full_sha256(served, tmp_path):
    result, out = fetch(tmp_path, {"source": "torchvision", "torchvision": ENUM, "mirror": served["url"],
                                   "sha256": served["sha256"], "timeout_s": 10})
    assert result.returncode == 0, result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arch"] == "squeezenet1_1" and manifest["num_classes"] == 1000
    assert manifest["sha256"] == served["sha256"] == sha256(out / "weights.pth")
    assert (out / "weights.pth").read_bytes() == served["file"].read_bytes()
    # The mirror serves the official file's path: the one torchvision's enum names.
    official = urllib.parse.urlparse(torchvision.models.get_weight(ENUM).url).path
    assert official == f"/models/{FILE_NAME}"
    assert manifest["preprocessing"]["crop_size"] == 224 and manifest["preprocessing"]["resize_size"] == 256
    assert manifest["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert len(manifest["classes"]) == 1000
    assert manifest["source"] == {"kind": "torchvision", "name": ENUM, "url": f"{served['url']}/models/{FILE_NAME}"}


def test_torchvision_weights_in_torch_hub_s_cache_are_taken_from_it_only_where_they_pass_the_check(served, tmp_path):
    """Weights torchvision downloaded before (torch.hub's cache, under $TORCH_HOME) are copied, on a machine without
    the internet, where the file passes the check a download would; a file there that fails it is downloaded over.
    The cache is only read."""
    import socket

    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / FILE_NAME).write_bytes(served["file"].read_bytes())
    with socket.socket() as closed:  # a port nothing listens on: any download fails
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
    env = {"TORCH_HOME": str(tmp_path / "torch-home")}
    result, out = fetch(tmp_path, {"source": "torchvision", "torchvision": ENUM, "mirror": nowhere,
                                   "sha256": served["sha256"], "timeout_s": 5}, env=env)
    assert result.returncode == 0, result.stdout
    assert f"taken from torch.hub's cache: {cache / FILE_NAME} (sha256 checked), nothing downloaded" in result.stdout
    assert (out / "weights.pth").read_bytes() == served["file"].read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sha256"] == served["sha256"] and manifest["source"]["cache"] == str(cache / FILE_NAME)
    # another file under the official name: not the pinned one, so it is downloaded (and the cache left as it was)
    torch.manual_seed(1)
    torch.save(build_architecture("squeezenet1_1", 1000).state_dict(), cache / FILE_NAME)
    other = (cache / FILE_NAME).read_bytes()
    result, out = fetch(tmp_path, {"source": "torchvision", "torchvision": ENUM, "mirror": served["url"],
                                   "sha256": served["sha256"], "timeout_s": 10}, env=env)
    assert result.returncode == 0, result.stdout
    assert (f"note: {cache / FILE_NAME} (torch.hub's cache) has sha256 {sha256(cache / FILE_NAME)}, not sha256 "
            f"{served['sha256']}: downloading instead") in result.stdout, result.stdout
    assert (out / "weights.pth").read_bytes() == served["file"].read_bytes() and (cache / FILE_NAME).read_bytes() == other
    assert "cache" not in json.loads((out / "manifest.json").read_text())["source"]
    # without a full sha256, the name's hash prefix decides, as for a download: the cached file fails it too
    result, out = fetch(tmp_path, {"source": "torchvision", "torchvision": ENUM, "mirror": nowhere, "timeout_s": 5},
                        env=env)
    assert result.returncode == 1 and "a sha256 starting with b8a52dc0: downloading instead" in result.stdout
    assert f"download of {nowhere}/models/{FILE_NAME} failed" in result.stdout, result.stdout


def test_a_cached_file_that_fails_the_class_check_is_named_not_the_url_never_downloaded(served, tmp_path):
    """A file in torch.hub's cache, pinned by its sha256, whose output layer disagrees with the weights' classes: the
    refusal named the download URL, though nothing was downloaded; it names the cached file that was read."""
    import socket

    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(2)
    torch.save(build_architecture("squeezenet1_1", 10).state_dict(), cache / FILE_NAME)  # 10 classes, not 1000
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
    result, _ = fetch(tmp_path, {"source": "torchvision", "torchvision": ENUM, "mirror": nowhere,
                                 "sha256": sha256(cache / FILE_NAME), "timeout_s": 5},
                      env={"TORCH_HOME": str(tmp_path / "torch-home")})
    assert result.returncode == 1 and "taken from torch.hub's cache" in result.stdout, result.stdout
    assert f"error: {cache / FILE_NAME}: the output layer has 10 classes but" in result.stdout, result.stdout
    assert nowhere not in result.stdout.split("error:", 1)[1]


def test_a_sha256_written_in_capitals_takes_the_cached_file_it_pins(tmp_path, monkeypatch):
    """weights.sha256 may be written in capitals (the schema allows A-F): the file in torch.hub's cache whose sha256
    (computed here by hashlib) is that value is taken, not refused and downloaded (which fails on an offline node)."""
    from finetune.weights import _from_hub_cache

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "w.pth").write_bytes(b"weights bytes")
    digest = hashlib.sha256(b"weights bytes").hexdigest()
    lines = []
    assert _from_hub_cache("w.pth", tmp_path / "out.pth", digest.upper(), None, lines.append) == digest, lines
    assert (tmp_path / "out.pth").read_bytes() == b"weights bytes"


def test_a_mirror_written_with_a_trailing_slash_serves_the_official_path(served, tmp_path):
    """weights.mirror 'http://host:port/': the file is fetched from, and recorded as, the mirror's URL with the
    official path once (torchvision's enum's), not with '//' between them."""
    result, out = fetch(tmp_path, {"source": "torchvision", "torchvision": ENUM, "mirror": served["url"] + "/",
                                   "sha256": served["sha256"], "timeout_s": 10})
    assert result.returncode == 0, result.stdout
    official = urllib.parse.urlparse(torchvision.models.get_weight(ENUM).url).path
    assert json.loads((out / "manifest.json").read_text())["source"]["url"] == served["url"] + official


@pytest.mark.parametrize("torch_home, xdg", [(None, None), (None, "xdg-cache"), ("torch-home", "xdg-cache"),
                                             ("~/th", None)])
def test_torch_hub_s_cache_is_looked_for_where_torch_hub_puts_it(tmp_path, monkeypatch, torch_home, xdg):
    """The folder whose files are taken instead of a download is torch.hub's own (torch.hub.get_dir(), asked here)
    /checkpoints, under TORCH_HOME, else XDG_CACHE_HOME, else ~/.cache."""
    from finetune.weights import hub_checkpoints_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name, value in (("TORCH_HOME", torch_home), ("XDG_CACHE_HOME", xdg)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value if value.startswith("~") else str(tmp_path / value))
    assert hub_checkpoints_dir() == Path(torch.hub.get_dir()) / "checkpoints"


def test_a_sha256_in_capitals_pins_a_download_and_a_local_file_too(tmp_path):
    """weights.sha256 in capitals pins a file downloaded from a real server and a local file copied, as in lower
    case: both are taken, each with its sha256 (hashlib's, lower case) recorded."""
    from finetune.weights import copy_local, download

    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "w.pth").write_bytes(b"weights bytes")
    digest = hashlib.sha256(b"weights bytes").hexdigest()
    with serve_folder(folder) as base_url:
        assert download(f"{base_url}/w.pth", tmp_path / "downloaded.pth", sha256=digest.upper(), timeout_s=10) == digest
    assert (tmp_path / "downloaded.pth").read_bytes() == b"weights bytes"
    assert copy_local(str(folder / "w.pth"), tmp_path / "copied.pth", digest.upper()) == digest
    assert (tmp_path / "copied.pth").read_bytes() == b"weights bytes"


def test_the_hash_digits_of_a_weights_file_s_name_must_begin_its_sha256(tmp_path):
    """torchvision's check: the digits in the file's name (resnet18-f37072fd.pth) are the first of its sha256. A
    file whose sha256 has those digits elsewhere is refused, and nothing is kept; one that begins with them is taken."""
    from finetune.errors import WeightsError
    from finetune.weights import download

    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "w.pth").write_bytes(b"other weights")
    digest = hashlib.sha256(b"other weights").hexdigest()
    with serve_folder(folder) as base_url:
        with pytest.raises(WeightsError, match=f"expected a sha256 starting with {digest[8:16]}"):
            download(f"{base_url}/w.pth", tmp_path / "refused.pth", hash_prefix=digest[8:16], timeout_s=10)
        assert not (tmp_path / "refused.pth").exists()
        assert download(f"{base_url}/w.pth", tmp_path / "taken.pth", hash_prefix=digest[:8], timeout_s=10) == digest


def test_torchvision_weights_of_another_head_from_a_mirror_are_refused_naming_the_enum(tmp_path):
    """A mirror's own fine-tuned file (10 classes) pinned by its full sha256 at the official path: the enum's categories
    (1,000) disagree with it, and the message says so, not a weights.classes the user never wrote (and cannot, with
    source torchvision), and what to use instead."""
    folder = tmp_path / "mirror"
    (folder / "models").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_architecture("squeezenet1_1", 10).state_dict(), folder / "models" / FILE_NAME)
    with serve_folder(folder) as base_url:
        result, out = fetch(tmp_path, {"source": "torchvision", "torchvision": ENUM, "mirror": base_url,
                                       "sha256": sha256(folder / "models" / FILE_NAME), "timeout_s": 10})
    assert result.returncode == 1 and not (out / "weights.pth").exists(), result.stdout
    assert (f"the output layer has 10 classes but weights.torchvision {ENUM} (its categories, which a file of another "
            "head") in result.stdout and "use weights.source url or path with weights.classes" in result.stdout, result.stdout
    assert "weights.classes names" not in result.stdout


def test_torchvision_hash_check_refuses_a_file_that_is_not_the_official_one(served, tmp_path):
    # Without a full sha256, torch.hub's hash-prefix convention applies: the served file's sha256
    # does not start with the b8a52dc0 its official name promises (the prefix torch.hub itself reads).
    assert torch.hub.HASH_REGEX.search(FILE_NAME).group(1) == "b8a52dc0"
    assert not served["sha256"].startswith("b8a52dc0")
    result, out = fetch(tmp_path, {"source": "torchvision", "torchvision": ENUM, "mirror": served["url"], "timeout_s": 10})
    assert result.returncode == 1
    assert "b8a52dc0" in result.stdout and FILE_NAME in result.stdout
    assert not (out / "weights.pth").exists() and not (out / "manifest.json").exists()


def test_a_mirror_without_the_file_names_the_mirror_key(served, tmp_path):
    """The mirror gave the URL, so a 404 there says to check weights.mirror (the user wrote no weights.url)."""
    result, out = fetch(tmp_path, {"source": "torchvision", "torchvision": ENUM, "mirror": f"{served['url']}/elsewhere",
                                   "sha256": served["sha256"], "timeout_s": 10})
    assert result.returncode == 1, result.stdout
    assert (f"download of {served['url']}/elsewhere/models/{FILE_NAME} failed: HTTP 404 File not found; check "
            "weights.mirror (the official file's path under it)") in result.stdout, result.stdout
    assert "weights.url" not in result.stdout and not (out / "weights.pth").exists()


def test_url_weights_verified_by_sha256(served, tmp_path):
    cfg = {"source": "url", "url": f"{served['url']}/models/{FILE_NAME}", "sha256": served["sha256"],
           "arch": "squeezenet1_1", "timeout_s": 10,
           "preprocessing": {"resize_size": 36, "crop_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}}
    result, out = fetch(tmp_path, cfg)
    assert result.returncode == 0, result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "url" and manifest["preprocessing"]["crop_size"] == 32
    assert manifest["sha256"] == sha256(out / "weights.pth") == served["sha256"]
    assert (out / "weights.pth").read_bytes() == served["file"].read_bytes()


def test_url_weights_with_a_wrong_sha256_are_refused(served, tmp_path):
    wrong = "0" * 64
    cfg = {"source": "url", "url": f"{served['url']}/models/{FILE_NAME}", "sha256": wrong, "arch": "squeezenet1_1",
           "preprocessing": {"resize_size": 32, "crop_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}}
    result, out = fetch(tmp_path, cfg)
    assert result.returncode == 1
    assert wrong in result.stdout and served["sha256"] in result.stdout and FILE_NAME in result.stdout
    assert not (out / "weights.pth").exists()
    assert not out.exists() or not any(out.iterdir()), "no partial file may be left behind"


def test_local_path_weights(served, tmp_path):
    cfg = {"source": "path", "path": str(served["file"]), "sha256": served["sha256"], "arch": "squeezenet1_1",
           "preprocessing": {"resize_size": 32, "crop_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}}
    result, out = fetch(tmp_path, cfg)
    assert result.returncode == 0, result.stdout
    assert json.loads((out / "manifest.json").read_text())["source"] == {"kind": "path", "path": str(served["file"])}
    assert (out / "weights.pth").read_bytes() == served["file"].read_bytes()


def test_squeezenet_head_replacement_from_downloaded_weights(served, tmp_path):
    from finetune.models import build_target_model, find_output_layer
    from finetune.weights import load_state_dict

    model = build_target_model("squeezenet1_1", 4, load_state_dict(served["file"]), 1000)
    name, head = find_output_layer(model)
    assert name == "classifier.1" and head.out_channels == 4
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 4)


def test_torchvision_weights_through_the_workflow_need_no_arch_and_a_wrong_one_is_refused_at_start(served, tmp_path):
    """Through Snakemake, where the schema fills every default: weights.arch left out (its default is
    resnet18) must not refuse SqueezeNet's weights; written wrong, it is refused at start."""
    from helpers import jobs_run, run_snakemake, tiny_config

    weights = {"source": "torchvision", "torchvision": ENUM, "mirror": served["url"], "sha256": served["sha256"],
               "timeout_s": 10}
    config = tiny_config(tmp_path, replace={"weights": weights})
    run_snakemake(tmp_path, config, "--printshellcmds", "resources/weights/manifest.json")
    manifest = json.loads((tmp_path / "resources/weights/manifest.json").read_text())
    assert manifest["arch"] == "squeezenet1_1" and manifest["sha256"] == served["sha256"]

    # The same weights in other words: the enum's DEFAULT (the member it names), the matching arch written. Nothing
    # reruns (the job's param was the config as written: each retrained every run, decoding again for DEFAULT).
    target = ("--printshellcmds", "resources/weights/manifest.json", "resources/decoded/target/native/info.json")
    run_snakemake(tmp_path, config, *target)
    for same in ({"torchvision": "SqueezeNet1_1_Weights.DEFAULT"}, {"arch": "squeezenet1_1"},
                 {"sha256": served["sha256"].upper()}):  # hex digits in either case (it fetched and retrained)
        config = tiny_config(tmp_path, replace={"weights": {**weights, **same}})
        assert jobs_run(run_snakemake(tmp_path, config, "-n", *target).stdout) == [], same
    # The leaderboard names the file pinned (a mirror's own file under the official name), not the enum's alone
    summary = [line for line in run_snakemake(tmp_path, config, "-n", "--printshellcmds", "--forcerun", "summary",
                                              "results/summary.csv").stdout.splitlines() if "--weights-source" in line]
    assert summary and f"torchvision:{ENUM}@sha256:{served['sha256'][:12]}" in summary[0], summary

    # Written wrong (an arch of other weights, a member torchvision has not), refused at start naming the key, before
    # any job: Snakemake would have removed the earlier weights (and decoded images) when the job started.
    before = (tmp_path / "resources/weights/weights.pth").read_bytes()
    for wrong, message in (({"arch": "resnet18"}, f"weights.arch: 'resnet18', but {ENUM} belongs to 'squeezenet1_1'"),
                           ({"torchvision": "SqueezeNet1_1_Weights.IMAGENET1K_V3"},
                            "weights.torchvision: unknown torchvision weights 'SqueezeNet1_1_Weights.IMAGENET1K_V3' "
                            "(did you mean SqueezeNet1_1_Weights.IMAGENET1K_V1"),
                           ({"torchvision": ENUM.lower()},  # written in lower case: named as torchvision spells it
                            f"weights.torchvision: unknown torchvision weights '{ENUM.lower()}' (did you mean {ENUM}?)")):
        config = tiny_config(tmp_path, replace={"weights": {**weights, **wrong}})
        result = run_snakemake(tmp_path, config, *target, check=False)
        assert result.returncode != 0 and message in result.stdout, result.stdout[-3000:]
        assert jobs_run(result.stdout) == []
        assert (tmp_path / "resources/weights/weights.pth").read_bytes() == before


def test_a_mistyped_member_of_a_weights_enum_is_given_that_enum_s_members_as_hints():
    """`ResNet18_Weights.IMAGENET1K_V3` was told "did you mean ResNet18_Weights.IMAGENET1K_V1 or
    ResNet152_Weights.IMAGENET1K_V2 or ResNet152_Weights.IMAGENET1K_V1?": weights of other architectures. The hints are
    the members of the enum written (torchvision's own list of them here), its closest first."""
    from finetune.configcheck import _torchvision_weights_problems

    members = {f"ResNet18_Weights.{w.name}" for w in torchvision.models.get_model_weights("resnet18")} | {
        "ResNet18_Weights.DEFAULT"}
    (problem,) = _torchvision_weights_problems({"torchvision": "ResNet18_Weights.IMAGENET1K_V3"})
    hinted = re.search(r"\(did you mean (.+?)\?\)", problem).group(1).split(" or ")
    assert hinted[0] == "ResNet18_Weights.IMAGENET1K_V1" and set(hinted) <= members, problem
    # An enum not written right: the closest of every enum's members, as before.
    (problem,) = _torchvision_weights_problems({"torchvision": "ResNet18_Weight.IMAGENET1K_V1"})
    assert "did you mean ResNet18_Weights.IMAGENET1K_V1" in problem, problem


def test_the_weights_names_read_at_start_are_torchvision_s_own():
    """configcheck reads the weights enums from torchvision's source (importing it would add 1-2 s to every start):
    the same members, aliases included, and architectures as torchvision itself gives."""
    from finetune.configcheck import torchvision_weights_member, torchvision_weights_names

    expected = {}
    for arch in torchvision.models.list_models(module=torchvision.models):
        enum = torchvision.models.get_model_weights(arch)
        for member in enum.__members__:  # aliases (DEFAULT) included
            expected[f"{enum.__name__}.{member}"] = arch
    assert torchvision_weights_names() == expected
    for name in expected:
        resolved = torchvision.models.get_weight(name)
        assert torchvision_weights_member(name) == f"{type(resolved).__name__}.{resolved.name}", name


def test_pretrained_weights_are_published_without_importing_torch(tmp_path):
    """source: pretrain copies what the pretrain rule saved: its manifest comes from pretrain's info and the file's
    own hash, and the job never imports torch (seconds per job; ~10 s on the GPU machine). The versions it records
    are those torch and torchvision report, and the published file loads into the architecture."""
    torch.manual_seed(0)
    classes = ["a", "b", "c"]
    pretrain = tmp_path / "pretrain"
    pretrain.mkdir()
    torch.save(build_architecture("resnet18", len(classes)).state_dict(), pretrain / "model.pth")
    prep = {"resize_size": 32, "crop_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    (pretrain / "info.json").write_text(json.dumps({"arch": "resnet18", "classes": classes, "preprocessing": prep,
                                                    "split": "source.csv", "split_sha256": "0" * 64,
                                                    "best_val_accuracy": 0.5}))
    out = tmp_path / "out"
    code = f"""
import sys
from pathlib import Path
from finetune.stages import weights_stage
weights_stage({{"source": "pretrain", "arch": "resnet18"}}, Path({str(out / 'w.pth')!r}), Path({str(out / 'm.json')!r}),
              pretrained_info=Path({str(pretrain / 'info.json')!r}), pretrained_weights=Path({str(pretrain / 'model.pth')!r}))
print("torch imported:", "torch" in sys.modules, "torchvision imported:", "torchvision" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert result.returncode == 0, result.stderr
    assert "torch imported: False torchvision imported: False" in result.stdout
    manifest = json.loads((out / "m.json").read_text())
    assert manifest["sha256"] == sha256(pretrain / "model.pth") == sha256(out / "w.pth")
    assert (manifest["arch"], manifest["num_classes"], manifest["classes"]) == ("resnet18", 3, classes)
    assert (manifest["torch"], manifest["torchvision"]) == (torch.__version__, torchvision.__version__)
    state = torch.load(out / "w.pth", weights_only=True)
    build_architecture("resnet18", 3).load_state_dict(state)


@pytest.mark.parametrize("arch", ["resnet18", "squeezenet1_1", "mobilenet_v3_small"])
def test_the_new_output_layer_is_the_one_torchvision_builds_for_that_many_classes(arch):
    """Step 3 of the recipe: the source model's output layer (1,000 classes) replaced for 4 has the parameters, names
    and shapes of torchvision's own model built with num_classes=4 (a SqueezeNet's 1x1 convolution keeps its bias),
    and every other parameter is the source's, unchanged."""
    from finetune.models import replace_output_layer

    torch.manual_seed(0)
    source = build_architecture(arch, 1000)
    kept = {k: v.clone() for k, v in source.state_dict().items()}
    target = replace_output_layer(source, 4).state_dict()
    theirs = torchvision.models.get_model(arch, num_classes=4).state_dict()
    assert {k: tuple(v.shape) for k, v in target.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    changed = {k for k in target if k not in kept or target[k].shape != kept[k].shape or not torch.equal(target[k], kept[k])}
    head = {"resnet18": "fc", "squeezenet1_1": "classifier.1", "mobilenet_v3_small": "classifier.3"}[arch]
    assert changed == {f"{head}.weight", f"{head}.bias"}, changed


def test_source_weights_of_another_shape_are_refused_naming_each_with_both_shapes():
    """A state_dict with resnet18's keys but a 5x5 stem (a model changed before it was saved): refused naming the
    parameter, its shape in the file and the shape the architecture has, not loaded."""
    from finetune.errors import WeightsError
    from finetune.models import load_source_state

    model = build_architecture("resnet18", 3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    before = model.conv1.weight.detach().clone()
    with pytest.raises(WeightsError, match=r"the weights in w\.pth are not a resnet18 state_dict: 1 of another shape "
                                           r"\(conv1\.weight \(64, 3, 5, 5\) vs \(64, 3, 7, 7\)\)"):
        load_source_state(model, state, "w.pth", "resnet18")
    assert torch.equal(model.conv1.weight, before)


def test_the_weights_from_pretrain_run_alone_refuse_a_file_that_is_no_model_or_another_architecture(tiny_run, tmp_path):
    """weights.py with source pretrain copies the pretrain rule's file as it is (no torch import): run alone with the
    split file for it, it published a CSV as resnet18 weights with a manifest, and weights.arch resnet50 was not looked
    at. Both refused now, naming the file, and nothing is written; the pretrain rule's own file is published byte for
    byte, its sha256 (counted here) in the manifest."""
    model, info = tiny_run / "resources/pretrain/model.pth", tiny_run / "resources/pretrain/info.json"
    out = tmp_path / "out"

    def publish(weights: dict, pretrained: Path):
        return run_script("weights", "--weights", json.dumps(weights), "--out-weights", str(out / "weights.pth"),
                          "--out-manifest", str(out / "manifest.json"), "--pretrained-weights", str(pretrained),
                          "--pretrained-info", str(info))

    split = tiny_run / "resources/splits/target.csv"
    result = publish({"source": "pretrain"}, split)
    assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout[-2000:]
    assert f"error: {split} is not a PyTorch file (" in result.stdout and not any(out.glob("*")), result.stdout[-2000:]
    arch = json.loads(info.read_text())["arch"]
    result = publish({"source": "pretrain", "arch": "resnet50"}, model)
    assert result.returncode == 1 and (f"error: weights.arch is 'resnet50', but {model} holds a {arch} ({info})"
                                       in result.stdout) and not any(out.glob("*")), result.stdout[-2000:]
    assert publish({"source": "pretrain", "arch": arch}, model).returncode == 0
    assert (out / "weights.pth").read_bytes() == model.read_bytes()
    assert json.loads((out / "manifest.json").read_text())["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
