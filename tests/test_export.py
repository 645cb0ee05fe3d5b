"""ONNX export (issue 12): a failed parity check leaves no model behind and keeps an earlier one;
`export.exporter` and `export.opset` give the ONNX file they name, with a dynamic batch axis and
onnxruntime outputs that match PyTorch's, computed here on real test images."""

import json
import re
import shutil

import numpy as np
import onnx
import pytest
import torch

from helpers import jobs_run, run_script, run_snakemake, tiny_config
from recompute import held_out, model_inputs, onnx_logits, onnx_preprocessing, torch_logits

pytestmark = [pytest.mark.slow, pytest.mark.fashion_mnist]

RUN = "results/finetune/seed0"
IMPOSSIBLE = ("--tolerance", "5e-324", "--rtol", "0")  # the smallest positive float: only a bit-exact export meets it
# The failure tests export with TorchScript: the same staging and parity gate, in seconds, not minutes.
FAST = ("--exporter", "torchscript")


def export(tiny_run, out, *args):
    return run_script("export_onnx", "--checkpoint", str(tiny_run / RUN / "model.pt"),
                      "--split", str(tiny_run / "resources/splits/target.csv"), "--out-onnx", str(out / "model.onnx"),
                      "--out-parity", str(out / "onnx_parity.json"), "--parity-batch", "4", *args)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def parity_failure(result, out) -> float:
    """The one error line of a failed parity check; returns the max |diff| it reports."""
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
    message = next(line for line in result.stdout.splitlines() if line.startswith("error: "))
    assert "ONNX parity failed" in message and str(out / "model.onnx") in message, message
    assert f"> tolerance {float(IMPOSSIBLE[1]):g} + rtol 0 x" in message, message
    assert "export.tolerance" in message and "export.rtol" in message, message
    return float(re.search(r"max \|onnxruntime - PyTorch\| = (\S+) >", message).group(1))


def test_failed_parity_writes_no_model(tiny_run, tmp_path):
    out = tmp_path / "fresh"
    result = export(tiny_run, out, *IMPOSSIBLE, *FAST)
    diff = parity_failure(result, out)
    assert diff > 0, "the check must have failed on a real difference"
    # Nothing at all is left: no model.onnx, no parity report, no temporary file beside them.
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


def test_failed_parity_keeps_the_earlier_model_byte_for_byte(tiny_run, tmp_path):
    out = tmp_path / "earlier"
    out.mkdir()
    for name in ("model.onnx", "onnx_parity.json"):
        shutil.copy2(tiny_run / RUN / name, out / name)
    before = snapshot(out)
    result = export(tiny_run, out, *IMPOSSIBLE, *FAST)
    parity_failure(result, out)
    assert "the earlier one is unchanged" in result.stdout
    assert snapshot(out) == before, "the earlier model.onnx/onnx_parity.json changed, or a file was left beside them"


def test_a_new_model_removes_the_int8_model_made_from_the_earlier_one(tiny_run, tmp_path):
    """export.quantize turned off, then the model trained again: the int8 model and its report were left beside the
    new model.onnx (a shipped folder then held two models that disagree). A failed export keeps all three."""
    out = tmp_path / "earlier"
    out.mkdir()
    shutil.copy2(tiny_run / RUN / "model.onnx", out / "model.onnx")
    (out / "model.int8.onnx").write_bytes(b"the earlier model's int8 copy")
    (out / "quantization.json").write_text("{}")
    before = snapshot(out)
    parity_failure(export(tiny_run, out, *IMPOSSIBLE, *FAST), out)
    assert snapshot(out) == before
    result = export(tiny_run, out, *FAST)
    assert result.returncode == 0, result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "onnx_parity.json"]
    assert f"removed {out / 'model.int8.onnx'}, {out / 'quantization.json'}: made from the earlier model.onnx" in result.stdout


def test_a_damaged_checkpoint_or_model_names_the_command_that_makes_it_again(tiny_run, tmp_path):
    """A model.pt or model.onnx cut short: Snakemake still counts it as made (it compares times), so each plain rerun
    failed the same way, and the message said no way on. It names the file and `snakemake --forcerun` of it."""
    cut = tmp_path / "model.pt"
    cut.write_bytes((tiny_run / RUN / "model.pt").read_bytes()[:5000])
    result = run_script("export_onnx", "--checkpoint", str(cut), "--split", str(tiny_run / "resources/splits/target.csv"),
                        "--out-onnx", str(tmp_path / "out/model.onnx"), "--out-parity", str(tmp_path / "out/p.json"))
    assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout
    assert f"error: cannot read checkpoint {cut}: " in result.stdout
    assert f"The train job writes it again (training the run again): `snakemake --forcerun {cut}`" in result.stdout
    onnx_cut = tmp_path / "model.onnx"
    onnx_cut.write_bytes((tiny_run / RUN / "model.onnx").read_bytes()[:5000])
    (tmp_path / "images").mkdir()
    shutil.copy(tiny_run / RUN / "confusion_matrix.png", tmp_path / "images" / "a.png")
    result = run_script("predict", "--model", str(onnx_cut), "--images", str(tmp_path / "images"),
                        "--out", str(tmp_path / "p.csv"))
    assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout
    assert f"cannot load ONNX model {onnx_cut}: " in result.stdout
    assert f"One the workflow wrote is written again by `snakemake --forcerun {onnx_cut}`" in result.stdout
    # Another kind of file given as the checkpoint (the run's model.onnx, its metrics.json): nothing is cut short, and
    # training the run again (the advice above) would not help: said so, from the file's first bytes.
    for other in (tiny_run / RUN / "model.onnx", tiny_run / RUN / "metrics.json"):
        result = run_script("export_onnx", "--checkpoint", str(other), "--split",
                            str(tiny_run / "resources/splits/target.csv"), "--out-onnx", str(tmp_path / "o/model.onnx"),
                            "--out-parity", str(tmp_path / "o/p.json"))
        assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout
        head = other.read_bytes()[:40].decode("latin-1")
        assert (f"error: {other} is not a checkpoint the train job writes: its first bytes are {head!r}, not those of "
                "a file torch.save writes") in result.stdout, result.stdout
        assert "give the run's model.pt" in result.stdout and "--forcerun" not in result.stdout


@pytest.mark.parametrize("script", ["export_onnx", "evaluate"])
def test_a_weights_file_given_as_the_checkpoint_is_refused_naming_it(tiny_run, tmp_path, script):
    """A file torch reads that is not a train checkpoint (here the pretrained weights, a bare state dict: a
    mix-up of the two .pt/.pth files a run folder holds) is refused on one line naming it and what it should
    be, not a KeyError's traceback; nothing is written."""
    weights = tiny_run / "resources/pretrain/model.pth"
    assert "state_dict" not in torch.load(weights, weights_only=True)  # independently: a bare state dict
    split = str(tiny_run / "resources/splits/target.csv")
    out = tmp_path / "out"
    outputs = (["--out-onnx", str(out / "model.onnx"), "--out-parity", str(out / "p.json")] if script == "export_onnx" else
               ["--out-metrics", str(out / "m.json"), "--out-confusion", str(out / "c.csv"),
                "--out-predictions", str(out / "p.csv")])
    result = run_script(script, "--checkpoint", str(weights), "--split", split, *outputs)
    assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout
    assert f"error: {weights} is not a checkpoint written by the train rule" in result.stdout, result.stdout
    assert not out.exists() or not any(out.iterdir())


def test_a_model_onnx_cut_short_since_its_export_is_refused_at_start_until_made_again(tiny_run_copy):
    """A model.onnx cut short after its export checked it (a full disk while copying results): Snakemake said
    "Nothing to be done", keeping the broken deliverable as made. Refused at start, naming the file, with nothing run or
    removed; --forcerun of it exports it again, a model onnxruntime loads and that gives the earlier one's logits."""
    import onnxruntime

    workdir, model = tiny_run_copy, tiny_run_copy / RUN / "model.onnx"
    whole = model.read_bytes()
    model.write_bytes(whole[: len(whole) * 9 // 10])
    with pytest.raises(Exception):  # an independent verdict: onnxruntime cannot load it either
        onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    config = workdir / "config.yaml"
    refused = run_snakemake(workdir, config, check=False)
    assert refused.returncode != 0 and jobs_run(refused.stdout) == [], refused.stdout[-3000:]
    assert "a file made before was cut short or changed since its job wrote it: nothing ran" in refused.stdout
    assert f"{RUN}/model.onnx no longer loads as an ONNX model (DecodeError: " in refused.stdout, refused.stdout[-3000:]
    assert f"make it again with --forcerun {RUN}/model.onnx" in refused.stdout
    assert "(every job after it reruns)" in refused.stdout and "split on purpose" not in refused.stdout  # no split's
    assert model.read_bytes() == whole[: len(whole) * 9 // 10]
    # --forcerun of a rule before the export makes it again too, unnamed: not refused.
    assert "output: " + f"{RUN}/model.onnx" in run_snakemake(workdir, config, "-n", "--forcerun", "train").stdout
    # One whose last metadata entries are gone (a file cut inside its metadata, that still parses): refused too.
    proto = onnx.load_from_string(whole)
    kept = [(entry.key, entry.value) for entry in proto.metadata_props if entry.key != "finetune_version"]
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, dict(kept))
    model.write_bytes(proto.SerializeToString())
    refused = run_snakemake(workdir, config, check=False)
    assert refused.returncode != 0 and jobs_run(refused.stdout) == [], refused.stdout[-3000:]
    assert f"{RUN}/model.onnx lacks the metadata its export wrote: make it again" in refused.stdout, refused.stdout[-3000:]
    # --touch of another run's model touches this one no more than it declares it sound: still refused after it
    other = next(p.parent for p in (workdir / "results").glob("*/seed*/model.onnx") if p != model).relative_to(workdir)
    assert run_snakemake(workdir, config, "--touch", f"{other}/model.onnx").returncode == 0
    refused = run_snakemake(workdir, config, check=False)
    assert refused.returncode != 0 and f"{RUN}/model.onnx lacks the metadata" in refused.stdout, refused.stdout[-3000:]
    ran = run_snakemake(workdir, None, "--forcerun", f"{RUN}/model.onnx", "--printshellcmds", f"{RUN}/model.onnx",
                        "--configfile", str(config))
    assert jobs_run(ran.stdout) == ["export_onnx"], ran.stdout[-3000:]
    earlier = workdir / "earlier.onnx"
    earlier.write_bytes(whole)
    x = model_inputs(held_out(workdir)["path"], onnx_preprocessing(earlier))
    assert np.abs(onnx_logits(model, x) - onnx_logits(earlier, x)).max() <= 1e-5


def readme_ir_version(exporter, opset):
    """The ONNX IR version the README says each exporter writes (which onnxruntime versions load it hangs on it)."""
    return 10 if exporter == "dynamo" else 7 if opset <= 14 else 8 if opset <= 18 else 9


def assert_sound_onnx(model_path, checkpoint_path, refs, opset, exporter):
    """The file's opset and IR version, its dynamic batch axis, and onnxruntime against PyTorch on ``refs``."""
    proto = onnx.load(str(model_path))
    onnx.checker.check_model(proto, full_check=True)
    default_domain = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    assert default_domain == [opset], f"{model_path}: opset_import {default_domain}, asked for {opset}"
    assert proto.ir_version == readme_ir_version(exporter, opset), (exporter, opset, proto.ir_version)
    for value in (proto.graph.input[0], proto.graph.output[0]):
        batch = value.type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.HasField("dim_value"), f"{value.name}: the batch axis is not dynamic"
    x = model_inputs(refs, onnx_preprocessing(model_path))
    expected = torch_logits(checkpoint_path, x)
    # Batch sizes the export never saw (it traced batch 2): 1 and all the test images.
    for batch in (x[:1], x):
        actual = onnx_logits(model_path, batch)
        assert actual.shape == (len(batch), 4)
        assert np.abs(actual - expected[: len(batch)]).max() <= 1e-4
    assert (onnx_logits(model_path, x).argmax(1) == expected.argmax(1)).all()


def test_a_model_with_large_logits_is_judged_by_their_size(tiny_run, tmp_path):
    """A faithful export of a model whose logits reach ~1e5 (a sweep's diverged run, say) differs from PyTorch
    by float rounding of that size: it passes the default export.rtol; the absolute tolerance alone refuses it."""
    import torch

    checkpoint = torch.load(tiny_run / RUN / "model.pt", weights_only=False)
    for key in ("fc.weight", "fc.bias"):
        checkpoint["state_dict"][key] = checkpoint["state_dict"][key] * 1e5
    large = tmp_path / "large.pt"
    torch.save(checkpoint, large)
    refs = held_out(tiny_run)["path"]

    def export_large(out, *args):
        return run_script("export_onnx", "--checkpoint", str(large), "--split", str(tiny_run / "resources/splits/target.csv"),
                          "--out-onnx", str(out / "model.onnx"), "--out-parity", str(out / "onnx_parity.json"),
                          "--parity-batch", "4", *FAST, *args)

    result = export_large(tmp_path / "out")
    assert result.returncode == 0, result.stdout
    x = model_inputs(refs, onnx_preprocessing(tmp_path / "out/model.onnx"))
    expected, actual = torch_logits(large, x), onnx_logits(tmp_path / "out/model.onnx", x)
    scale = np.abs(expected).max(axis=1, keepdims=True)
    assert scale.min() > 1e3, "the logits were meant to be large"
    assert np.abs(actual - expected).max() > 1e-4, "rounding at this size exceeds the absolute tolerance alone"
    assert (np.abs(actual - expected) <= 1e-4 + 1e-5 * scale).all()
    assert (actual.argmax(1) == expected.argmax(1)).all()
    # rtol 0: the absolute tolerance alone judges, and refuses this model.
    result = export_large(tmp_path / "strict", "--rtol", "0")
    assert result.returncode == 1 and "ONNX parity failed" in result.stdout, result.stdout
    assert not (tmp_path / "strict/model.onnx").exists()


@pytest.mark.parametrize("exporter, opset", [("dynamo", 20), ("torchscript", 20), ("torchscript", 18), ("torchscript", 13)])
def test_script_exports_with_the_exporter_and_opset_asked_for(tiny_run, tmp_path, exporter, opset):
    out = tmp_path / "out"
    result = export(tiny_run, out, "--exporter", exporter, "--opset", str(opset))
    assert result.returncode == 0, result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "onnx_parity.json"]
    assert_sound_onnx(out / "model.onnx", tiny_run / RUN / "model.pt", held_out(tiny_run)["path"], opset, exporter)


def test_export_config_keys_reach_the_exported_file(tiny_run, tiny_run_copy):
    """`export.exporter: torchscript` and `export.opset: 17` through the real snakemake: the export reruns."""
    workdir = tiny_run_copy
    config = tiny_config(workdir, name="torchscript.yaml", export={"exporter": "torchscript", "opset": 17})
    # The target goes before --configfile, which would take it for a second config file.
    result = run_snakemake(workdir, None, f"{RUN}/model.onnx", "--configfile", str(config))
    assert jobs_run(result.stdout) == ["export_onnx"], result.stdout[-3000:]
    assert_sound_onnx(workdir / RUN / "model.onnx", workdir / RUN / "model.pt", held_out(workdir)["path"], 17,
                      "torchscript")
    # The default config's model (dynamo) carries the default opset, 18.
    assert_sound_onnx(tiny_run / RUN / "model.onnx", tiny_run / RUN / "model.pt", held_out(tiny_run)["path"], 18,
                      "dynamo")


DYNAMO_17 = ("export.opset: 17 with export.exporter: dynamo: torch's dynamo exporter writes opset 18 or later")


def test_an_opset_the_exporter_cannot_write_is_refused(tiny_run, tmp_path):
    """torch's dynamo exporter, asked for opset 17, quietly writes 18: refused, never delivered as 17."""
    out = tmp_path / "out"
    result = export(tiny_run, out, "--exporter", "dynamo", "--opset", "17")
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
    assert f"error: {DYNAMO_17}" in result.stdout and "export.exporter: torchscript" in result.stdout
    assert not out.exists() or not any(out.iterdir())
    # The workflow refuses the config before anything runs.
    workdir = tmp_path / "workdir"
    config = tiny_config(workdir, export={"exporter": "dynamo", "opset": 17})
    result = run_snakemake(workdir, config, "-n", check=False)
    assert result.returncode != 0 and DYNAMO_17 in result.stdout, result.stdout[-3000:]
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()


@pytest.mark.fashion_mnist
def test_an_opset_above_the_torchscript_exporter_s_is_refused_before_anything_runs(tmp_path):
    """torch's torchscript exporter writes opset 20 at most: asked for more, it stopped with a traceback after training."""
    from torch.onnx import _constants

    from finetune.optionrules import TORCHSCRIPT_MAX_OPSET

    assert TORCHSCRIPT_MAX_OPSET == _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET  # this torch's own limit
    workdir = tmp_path / "workdir"
    config = tiny_config(workdir, export={"exporter": "torchscript", "opset": TORCHSCRIPT_MAX_OPSET + 1})
    result = run_snakemake(workdir, config, "-n", check=False)
    assert result.returncode != 0, result.stdout[-3000:]
    assert (f"export.opset: {TORCHSCRIPT_MAX_OPSET + 1} with export.exporter: torchscript: torch's torchscript exporter "
            f"writes opset {TORCHSCRIPT_MAX_OPSET} at most") in result.stdout, result.stdout[-3000:]
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()
    config = tiny_config(workdir, export={"exporter": "torchscript", "opset": TORCHSCRIPT_MAX_OPSET})
    assert run_snakemake(workdir, config, "-n", check=False).returncode == 0


@pytest.mark.fashion_mnist
def test_an_opset_newer_than_onnx_knows_is_refused_before_anything_runs(tmp_path):
    """Asked for opset 99, the export failed after training with onnx's traceback and a message that said the
    exporter had written opset 18."""
    import onnx

    from finetune.optionrules import DYNAMO_MAX_OPSET

    assert DYNAMO_MAX_OPSET == onnx.defs.onnx_opset_version()  # the installed onnx's newest
    result = run_snakemake(tmp_path, tiny_config(tmp_path, export={"opset": DYNAMO_MAX_OPSET + 1}), "-n", check=False)
    assert result.returncode != 0 and (f"export.opset: {DYNAMO_MAX_OPSET + 1}: the newest ONNX opset is {DYNAMO_MAX_OPSET} "
                                       f"(onnx's, as installed); set export.opset <= {DYNAMO_MAX_OPSET}") in result.stdout, \
        result.stdout[-3000:]
    assert run_snakemake(tmp_path, tiny_config(tmp_path, export={"opset": DYNAMO_MAX_OPSET}), "-n", check=False).returncode == 0


def test_a_parity_batch_larger_than_the_test_images_is_said_and_the_batch_used_recorded(tiny_run, tmp_path):
    out = tmp_path / "out"
    n_test = len(held_out(tiny_run))
    result = export(tiny_run, out, *FAST, "--parity-batch", "200")
    assert result.returncode == 0, result.stdout
    assert (f"note: export.parity_batch 200 is more than the {n_test} test images of the parity check: checked at "
            f"batch {n_test}") in result.stdout, result.stdout[-2000:]
    parity = json.loads((out / "onnx_parity.json").read_text())
    assert parity["n_images"] == n_test and f"batch_{n_test}" in json.dumps(parity["checks"]), parity["checks"]


def test_a_model_with_a_tensor_outside_its_state_dict_is_rebuilt_whole_from_a_checkpoint():
    """Where building on the meta device pays (torch._dynamo loaded, as in an export job), a model is built
    there and given the checkpoint's tensors. A tensor the state dict does not hold (a non-persistent buffer,
    made by the model's own constructor) would stay on the meta device, with no values: such a model is built
    the usual way instead, its buffer as its constructor makes it, its weights the checkpoint's."""
    import torch._dynamo  # noqa: F401  (what makes the meta build pay for a small model)
    from torch import nn

    from finetune.stages import _meta_build_pays, _model_from_state

    class WithScale(nn.Module):
        def __init__(self, num_classes: int):
            super().__init__()
            self.fc = nn.Linear(3, num_classes)
            self.register_buffer("scale", torch.arange(1.0, 4.0), persistent=False)

        def forward(self, x):
            return self.fc(x * self.scale)

    state = {"fc.weight": torch.randn(2, 3), "fc.bias": torch.randn(2)}
    assert _meta_build_pays(state)
    model = _model_from_state(lambda arch, n: WithScale(n), "with_scale", 2, state)
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    assert torch.equal(model.scale, torch.tensor([1.0, 2.0, 3.0]))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    x = torch.randn(4, 3)
    assert torch.allclose(model(x), (x * torch.tensor([1.0, 2.0, 3.0])) @ state["fc.weight"].T + state["fc.bias"])
