"""ONNX that deploys (issue 4): the exported model alone, with its metadata, reproduces the evaluate
rule's accuracy; `predict` classifies new images without torch; INT8 quantization when enabled."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from PIL import Image

from finetune.images import normalize, preprocess, read_idx
from helpers import FASHION_MNIST, REPO, jobs_run, run_snakemake, tiny_config
from recompute import held_out, model_inputs, onnx_logits, onnx_preprocessing, probabilities

pytestmark = [pytest.mark.slow, pytest.mark.fashion_mnist]

RUNS = ["finetune/seed0", "feature_extract/seed0", "scratch/seed0"]
CLASSES = ["Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.mark.parametrize("run", RUNS)
def test_exported_model_alone_reproduces_the_evaluate_accuracy(tiny_run, run):
    """A fresh onnxruntime session, the model's metadata and nothing else: the same predictions,
    hence exactly as many correct test images as the evaluate rule counted (with PyTorch)."""
    folder = tiny_run / "results" / run
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    classes = json.loads(meta["classes"])
    resize, crop = int(meta["resize_size"]), int(meta["crop_size"])
    mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
    assert meta["channel_order"] == "RGB" and meta["layout"] == "NCHW" and meta["interpolation"] == "bilinear"
    assert json.loads(meta["input_size"]) == [3, crop, crop]

    test = held_out(tiny_run)
    prep = {"resize_size": resize, "crop_size": crop, "mean": mean, "std": std}
    logits = session.run(None, {session.get_inputs()[0].name: model_inputs(test["path"], prep)})[0]
    predicted = [classes[i] for i in logits.argmax(1)]

    metrics = json.loads((folder / "metrics.json").read_text())
    evaluated = pd.read_csv(folder / "test_predictions.csv")
    assert list(evaluated["path"]) == list(test["path"])
    assert predicted == list(evaluated["predicted"])
    correct = sum(p == t for p, t in zip(predicted, test["class_name"]))
    assert correct == round(metrics["accuracy"] * metrics["n_test"])
    assert correct / len(test) == metrics["accuracy"]


def test_metadata_names_classes_preprocessing_and_the_source_weights(tiny_run):
    manifest = json.loads((tiny_run / "resources/weights/manifest.json").read_text())
    for run in RUNS:
        proto = onnx.load(str(tiny_run / "results" / run / "model.onnx"))
        meta = {p.key: p.value for p in proto.metadata_props}
        assert json.loads(meta["classes"]) == CLASSES
        assert json.loads(meta["mean"]) == pytest.approx(manifest["preprocessing"]["mean"])
        assert json.loads(meta["std"]) == pytest.approx(manifest["preprocessing"]["std"])
        assert int(meta["crop_size"]) == manifest["preprocessing"]["crop_size"]
        assert meta["finetune_version"] and meta["arch"] == "resnet18"
        expected_sha = "None" if run.startswith("scratch") else manifest["sha256"]
        assert meta["source_weights_sha256"] == expected_sha
        batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param and not batch_dim.dim_value, "the batch axis must be dynamic"


def write_images(folder, n=4):
    """Real Fashion-MNIST test images as PNG/JPEG files, one corrupt PNG and a non-image file."""
    pixels = read_idx(f"{FASHION_MNIST}/t10k-images-idx3-ubyte.gz")
    (folder / "nested").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(pixels[i]).save(folder / f"item{i}.png")
    Image.fromarray(np.stack([pixels[n]] * 3, axis=-1)).resize((90, 70)).save(folder / "nested" / "photo.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (folder / "notes.txt").write_text("not an image")
    return n + 1


PREDICT_WITHOUT_TORCH = textwrap.dedent("""
    import runpy, sys
    sys.argv = ["predict.py"] + sys.argv[1:]
    code = 0
    try:
        runpy.run_path({script!r}, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    print("modules:", "torch" in sys.modules, "onnxruntime" in sys.modules, "PIL" in sys.modules)
    sys.exit(code)
""")


def run_predict(*args):
    script = str(REPO / "workflow/scripts/predict.py")
    return subprocess.run([sys.executable, "-c", PREDICT_WITHOUT_TORCH.format(script=script), *args],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})


def test_predict_run_alone_never_writes_over_its_inputs_or_an_earlier_good_file(tiny_run, tmp_path):
    """predict.py run by hand: an --out that names its own model, its list of images or an image (a slip of the
    shell's history) wrote the predictions over it, exit 0; an --out that is a folder failed only after classifying
    everything; and a folder of which no image could be read replaced earlier good predictions with a table of
    errors before failing. Each is refused now, the files byte for byte as they were."""
    model = tmp_path / "model.onnx"
    shutil.copy(tiny_run / "results/finetune/seed0/model.onnx", model)
    images = tmp_path / "images"
    write_images(images)
    listed = tmp_path / "list.csv"
    listed.write_text("path\nimages/item0.png\nimages/item1.png\n")
    before = {path: path.read_bytes() for path in (model, listed, images / "item0.png")}
    for source, out, named in ((images, model, "--model"), (listed, listed, "--images"), (images / "item0.png", images / "item0.png", "--images"),
                               (images, images / "item1.png", "an image")):
        result = run_predict("--model", str(model), "--images", str(source), "--out", str(out))
        assert result.returncode != 0 and f"--out {out}" in result.stderr and named in result.stderr, result.stderr
        assert "classified" not in result.stderr, result.stderr  # refused before any image is read
    assert {path: path.read_bytes() for path in before} == before
    assert (images / "item1.png").read_bytes()[:4] == b"\x89PNG"
    result = run_predict("--model", str(model), "--images", str(images), "--out", str(tmp_path))
    assert result.returncode != 0 and f"--out {tmp_path} is a folder" in result.stderr, result.stderr
    assert "classified" not in result.stderr
    good = tmp_path / "good.csv"
    assert run_predict("--model", str(model), "--images", str(images), "--out", str(good)).returncode == 0
    kept = good.read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    result = run_predict("--model", str(model), "--images", str(bad), "--out", str(good))
    assert result.returncode == 1 and "none of the 1 image(s) could be read" in result.stderr, result.stderr
    assert good.read_bytes() == kept


def test_predict_classifies_a_folder_without_torch_and_reports_the_corrupt_image(tiny_run, tmp_path):
    images = tmp_path / "new images"
    n_good = write_images(images)
    os.mkfifo(images / "pipe.png")  # opened as an image, it waited for a writer forever
    out = tmp_path / "predictions.csv"
    model = tiny_run / "results/finetune/seed0/model.onnx"
    result = run_predict("--model", str(model), "--images", str(images), "--out", str(out), "--top-k", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    # The script ran on onnxruntime and Pillow, and never imported torch.
    assert "modules: False True True" in result.stdout, result.stdout
    assert "broken.png" in result.stderr and "warning" in result.stderr
    assert "warning: ignored files that are not images of a format read here (1 .txt)" in result.stderr

    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["path", "predicted", "probability", "top1_class", "top1_probability",
                                   "top2_class", "top2_probability", "top3_class", "top3_probability", "error"]
    assert len(table) == n_good + 2  # notes.txt is not an image file: not listed
    broken = table[table["path"].str.endswith("broken.png")].iloc[0]
    assert broken["predicted"] == "" and "broken.png" in broken["error"]
    pipe = table[table["path"].str.endswith("pipe.png")].iloc[0]
    assert pipe["predicted"] == "" and "not a regular file (a named pipe, socket or device)" in pipe["error"]
    good = table[table["error"] == ""]
    assert len(good) == n_good
    assert set(good["predicted"]) <= set(CLASSES)
    assert (good["predicted"] == good["top1_class"]).all()
    probs = good[["top1_probability", "top2_probability", "top3_probability"]].astype(float).to_numpy()
    assert (np.diff(probs, axis=1) <= 0).all() and (probs.sum(axis=1) <= 1 + 1e-5).all()
    assert any(p.endswith("nested/photo.jpg") for p in good["path"])  # folders are searched recursively

    # Every readable image, run here through the model on its own: the same top-3 classes and probabilities.
    prep = onnx_preprocessing(model)
    for (_, row), p in zip(good.iterrows(), probabilities(onnx_logits(model, model_inputs(good["path"], prep)))):
        ranked = sorted(range(len(CLASSES)), key=lambda c: -p[c])[:3]
        assert row["predicted"] == CLASSES[ranked[0]], row["path"]
        assert float(row["probability"]) == pytest.approx(p[ranked[0]], abs=1e-5)
        assert [row[f"top{k}_class"] for k in (1, 2, 3)] == [CLASSES[c] for c in ranked], row["path"]
        assert [float(row[f"top{k}_probability"]) for k in (1, 2, 3)] == pytest.approx([p[c] for c in ranked], abs=1e-5)


def test_predict_reads_a_csv_list_and_keeps_going_past_missing_files(tiny_run, tmp_path):
    images = tmp_path / "imgs"
    write_images(images, n=2)
    listing = tmp_path / "list.csv"
    pd.DataFrame({"path": ["imgs/item0.png", "imgs/missing.png", str(images / "item1.png"), "imgs/nested"],
                  "note": ["a", "b", "c", "d"]}).to_csv(listing, index=False)
    out = tmp_path / "out.csv"
    result = run_predict("--model", str(tiny_run / "results/scratch/seed0/model.onnx"), "--images", str(listing),
                         "--out", str(out), "--top-k", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table["path"]) == ["imgs/item0.png", "imgs/missing.png", str(images / "item1.png"), "imgs/nested"]
    assert "not found" in table.loc[1, "error"] and "missing.png" in result.stderr
    assert table.loc[3, "error"].endswith("imgs/nested: a folder, not an image file"), table.loc[3, "error"]
    assert table.loc[0, "error"] == "" and table.loc[2, "error"] == ""
    assert "top4_class" in table.columns and "top5_class" not in table.columns  # k is capped at 4 classes, as said
    assert "note: top-k 10: the model has 4 classes, so each row lists all 4" in result.stderr, result.stderr
    # The same list written by hand, with spaces after the commas (`note, path`): the same rows.
    spaced = tmp_path / "spaced.csv"
    spaced.write_text("note, path\n" + "".join(f"{n}, {p}\n" for n, p in zip("abcd", table["path"])))
    result = run_predict("--model", str(tiny_run / "results/scratch/seed0/model.onnx"), "--images", str(spaced),
                         "--out", str(tmp_path / "spaced_out.csv"), "--top-k", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    assert pd.read_csv(tmp_path / "spaced_out.csv", keep_default_na=False).equals(table)


def test_predict_reads_a_listed_file_whose_name_ends_in_a_hash_and_digits(tiny_run, tmp_path):
    """A listed file named `photo#7`: read as image 7 inside a file `photo` (the form of Fashion-MNIST's references),
    its row said "cannot read IDX file". Its answer is that of the same bytes under a plain name."""
    import shutil

    write_images(tmp_path / "imgs", n=1)
    plain, hashed = tmp_path / "imgs" / "item0.png", tmp_path / "imgs" / "photo#7"
    shutil.copyfile(plain, hashed)
    listing = tmp_path / "list.csv"
    listing.write_text(f"path\n{hashed}\n")
    model = tiny_run / "results/finetune/seed0/model.onnx"
    result = run_predict("--model", str(model), "--images", str(listing), "--out", str(tmp_path / "out.csv"))
    assert result.returncode == 0, result.stdout + result.stderr
    table = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert list(table["path"]) == [str(hashed)] and table.loc[0, "error"] == "", table.to_dict("records")
    p = probabilities(onnx_logits(model, model_inputs([str(plain)], onnx_preprocessing(model))))[0]
    assert table.loc[0, "predicted"] == CLASSES[int(np.argmax(p))]
    assert float(table.loc[0, "probability"]) == pytest.approx(max(p), abs=1e-5)


def test_predict_classifies_one_image_file_named_alone(tiny_run, tmp_path):
    """predict.images may name one image (by its extension, in any case): one row, the model's own answer
    recomputed here; before, the image was read as a CSV list and the job stopped on its bytes."""
    write_images(tmp_path / "imgs", n=1)
    image = tmp_path / "imgs" / "item0.PNG"
    (tmp_path / "imgs" / "item0.png").rename(image)
    model = tiny_run / "results/finetune/seed0/model.onnx"
    out = tmp_path / "one.csv"
    result = run_predict("--model", str(model), "--images", str(image), "--out", str(out), "--top-k", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table["path"]) == [str(image)] and table.loc[0, "error"] == ""
    p = probabilities(onnx_logits(model, model_inputs([str(image)], onnx_preprocessing(model))))[0]
    assert table.loc[0, "predicted"] == CLASSES[int(np.argmax(p))]
    assert float(table.loc[0, "probability"]) == pytest.approx(max(p), abs=1e-5)
    notes = tmp_path / "imgs" / "notes.txt"  # neither an image nor a list with a path column: named
    result = run_predict("--model", str(model), "--images", str(notes), "--out", str(tmp_path / "bad.csv"))
    assert result.returncode == 1 and f"image list {notes} has no `path` column" in result.stderr, result.stderr
    assert "a file that is not an image (.png, .jpg" in result.stderr and "is read as a CSV list of images" in result.stderr
    twice = tmp_path / "twice.csv"  # two `path` columns: the first alone was read, without a word
    twice.write_text(f"path,note,path\n{image},x,{image}\n")
    result = run_predict("--model", str(model), "--images", str(twice), "--out", str(tmp_path / "bad.csv"))
    assert result.returncode == 1 and f"image list {twice} has more than one `path` column" in result.stderr, \
        result.stderr
    assert not (tmp_path / "bad.csv").exists()
    # A JPEG saved as .jfif (browsers do) is an image; a binary file of another kind is named as the list it is not.
    jfif = tmp_path / "imgs" / "saved.jfif"
    Image.open(image).convert("RGB").save(jfif, format="JPEG")
    result = run_predict("--model", str(model), "--images", str(jfif), "--out", str(tmp_path / "jfif.csv"))
    assert result.returncode == 0, result.stdout + result.stderr
    p = probabilities(onnx_logits(model, model_inputs([str(jfif)], onnx_preprocessing(model))))[0]
    assert pd.read_csv(tmp_path / "jfif.csv", keep_default_na=False).loc[0, "predicted"] == CLASSES[int(np.argmax(p))]
    binary = tmp_path / "imgs" / ".DS_Store"
    binary.write_bytes(b"\x00\x00\x00\x01Bud1\xff\xfe" + bytes(range(256)))
    result = run_predict("--model", str(model), "--images", str(binary), "--out", str(tmp_path / "bad.csv"))
    assert result.returncode == 1 and f"cannot parse image list {binary}" in result.stderr, result.stderr
    assert "is read as a CSV list of images" in result.stderr


def test_an_image_whose_name_is_not_utf8_is_classified_and_named_with_escapes(tiny_run, tmp_path):
    """A file name in an old archive's encoding (Latin-1 `n\\xffme.png`): every image was classified, then writing
    the CSV failed on that name (UnicodeEncodeError, a traceback) and the job's earlier predictions were removed. Its
    row names it with the byte escaped, its prediction the model's own; the other images' rows are as before."""
    write_images(tmp_path / "imgs", n=2)
    odd = os.path.join(os.fsencode(tmp_path / "imgs"), b"n\xffme.png")
    os.rename(os.fsencode(tmp_path / "imgs" / "item1.png"), odd)
    unreadable = os.path.join(os.fsencode(tmp_path / "imgs"), b"br\xf6ken.png")  # its error names it too
    with open(unreadable, "wb") as handle:
        handle.write(b"not an image")
    model = tiny_run / "results/finetune/seed0/model.onnx"
    result = run_predict("--model", str(model), "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "out.csv"))
    assert result.returncode == 0, result.stdout + result.stderr
    table = pd.read_csv(tmp_path / "out.csv", keep_default_na=False).set_index("path")
    escaped = str(tmp_path / "imgs") + "/n\\xffme.png"
    assert escaped in table.index and str(tmp_path / "imgs" / "item0.png") in table.index, table.index
    assert "warning: 2 file name(s) not UTF-8 (an old archive's encoding)" in result.stderr, result.stderr
    broken = str(tmp_path / "imgs") + "/br\\xf6ken.png"
    assert table.loc[broken, "predicted"] == "" and broken in table.loc[broken, "error"], table.loc[broken].to_dict()
    p = probabilities(onnx_logits(model, model_inputs([os.fsdecode(odd)], onnx_preprocessing(model))))[0]
    assert table.loc[escaped, "predicted"] == CLASSES[int(np.argmax(p))] and table.loc[escaped, "error"] == ""
    assert float(table.loc[escaped, "probability"]) == pytest.approx(max(p), abs=1e-5)


def test_predict_fails_clearly_when_nothing_can_be_read(tiny_run, tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "bad.jpg").write_bytes(b"")
    out = tmp_path / "out.csv"
    result = run_predict("--model", str(tiny_run / "results/finetune/seed0/model.onnx"), "--images",
                         str(tmp_path / "only"), "--out", str(out))
    assert result.returncode == 1
    assert "error: none of the 1 image(s) could be read: the warning lines above say why" in result.stderr
    warning = f"cannot decode image {tmp_path / 'only' / 'bad.jpg'}: empty file (0 bytes)"
    assert warning in result.stderr.split("error: none of")[0], result.stderr  # said before the error, in the log
    assert f"{warning}\n" in result.stderr  # as the split says it
    assert f"; {out} was not written" in result.stderr and not out.exists()  # a table of errors alone: none
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_predict("--model", str(tiny_run / "results/finetune/seed0/model.onnx"), "--images", str(empty),
                         "--out", str(tmp_path / "none.csv"))
    assert result.returncode == 1 and "no image files in" in result.stderr


def test_predict_refuses_a_model_whose_class_names_do_not_match_its_outputs(tiny_run, tmp_path):
    """The `classes` metadata edited to 2 names on a 4-class model: an IndexError traceback, or with --top-k 1 labels
    that may be another score's. Refused, naming the file and both counts."""
    model = onnx.load(tiny_run / "results/finetune/seed0/model.onnx")
    for prop in model.metadata_props:
        if prop.key == "classes":
            prop.value = json.dumps(CLASSES[:2])
    edited = tmp_path / "edited.onnx"
    onnx.save(model, edited)
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "images" / "a.png")
    result = run_predict("--model", str(edited), "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out.csv"),
                         "--top-k", "1")
    assert result.returncode == 1, result.stderr
    assert (f"{edited}: its metadata 'classes' names 2 classes, but the model outputs 4 scores" in result.stderr
            and "Traceback" not in result.stderr), result.stderr
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("edit, said", [
    ({"std": json.dumps([0.5, 0.0, 0.5])}, "and std [0.5, 0.0, 0.5] must be finite numbers, the std above 0"),
    ({"mean": json.dumps([0.5, None, 0.5])}, "must be finite numbers, the std above 0"),
    ({"crop_size": "40", "resize_size": "40"}, "its metadata crop_size 40 is not the model's input size 32x32"),
    ({"crop_size": "40"}, "metadata crop_size 40 must be at least 1 and at most its resize_size 32"),
], ids=["std_zero", "mean_null", "crop_not_the_input", "crop_past_resize"])
def test_predict_refuses_metadata_that_preprocesses_otherwise_than_the_model_takes(tiny_run, tmp_path, edit, said):
    """A std of 0 divided every pixel by zero: probabilities of NaN written, "classified 1 of 1", exit 0; a crop_size
    other than the model's input size met onnxruntime's INVALID_ARGUMENT traceback at the first batch. Refused,
    naming the file; nothing written."""
    model = onnx.load(tiny_run / "results/finetune/seed0/model.onnx")
    meta = {prop.key: prop.value for prop in model.metadata_props}
    assert meta["crop_size"] == meta["resize_size"] == "32" and meta["input_size"] == "[3, 32, 32]", meta
    for prop in model.metadata_props:
        prop.value = edit.get(prop.key, prop.value)
    edited = tmp_path / "edited.onnx"
    onnx.save(model, edited)
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "images" / "a.png")
    result = run_predict("--model", str(edited), "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out.csv"))
    assert result.returncode == 1 and f"{edited}: " in result.stderr and said in result.stderr \
        and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_standalone_predict_names_a_missing_model_bad_metadata_and_options_it_does_not_use(tiny_run, tmp_path):
    """On a machine with only the model file: a mistyped --model was "cut short or damaged? ... snakemake --forcerun",
    a crop_size of '32.0' a ValueError traceback, --seed beside --model silently unused, a CSV list without pandas an
    ImportError traceback."""
    model = tiny_run / "results/finetune/seed0/model.onnx"
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "images" / "a.png")
    common = ("--images", str(tmp_path / "images"), "--out", str(tmp_path / "out.csv"))
    result = run_predict("--model", str(tmp_path / "nothere.onnx"), *common)
    assert result.returncode == 2, result.stderr  # a usage error, said before anything is read
    assert result.stderr.splitlines()[-1] == f"predict.py: error: --model {tmp_path / 'nothere.onnx'}: no such file"
    assert "--forcerun" not in result.stderr and "Traceback" not in result.stderr
    edited = onnx.load(model)
    for prop in edited.metadata_props:
        if prop.key == "crop_size":
            prop.value = "32.0"
    onnx.save(edited, tmp_path / "edited.onnx")
    result = run_predict("--model", str(tmp_path / "edited.onnx"), *common)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{tmp_path / 'edited.onnx'}: metadata crop_size='32.0' is not a whole number of pixels" in result.stderr
    result = run_predict("--model", str(model), "--seed", "1", *common)
    assert result.returncode == 2 and "--seed: only with --choose-from" in result.stderr, result.stderr
    assert not (tmp_path / "out.csv").exists()
    (tmp_path / "list.csv").write_text("path\nimages/a.png\n")
    script = str(REPO / "workflow/scripts/predict.py")
    result = subprocess.run([sys.executable, "-c", "import sys; sys.modules['pandas'] = None\n"
                             + PREDICT_WITHOUT_TORCH.format(script=script), "--model", str(model),
                             "--images", str(tmp_path / "list.csv"), "--out", str(tmp_path / "out.csv")],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "is read with pandas, which is not installed: `pip install pandas`" in result.stderr
    # a folder needs no pandas
    result = subprocess.run([sys.executable, "-c", "import sys; sys.modules['pandas'] = None\n"
                             + PREDICT_WITHOUT_TORCH.format(script=script), "--model", str(model), *common],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert result.returncode == 0, result.stderr


def test_quantizing_a_damaged_model_names_the_file_and_how_to_make_it_again(tiny_run, tmp_path):
    """A model.onnx cut short: quantize_onnx ended in onnx's "Unable to parse proto" traceback from inside the
    quantizer; predict on the same file said what to do."""
    from finetune.deploy import ModelError, quantize_stage

    damaged = tmp_path / "model.onnx"
    data = (tiny_run / "results/finetune/seed0/model.onnx").read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=rf"cannot load ONNX model {damaged}: .*snakemake --forcerun {damaged}"):
        quantize_stage(damaged, tiny_run / "resources/splits/target.csv", tmp_path / "model.int8.onnx",
                       tmp_path / "quantization.json", log=lambda _: None)
    assert not (tmp_path / "model.int8.onnx").exists()


def test_quantizing_an_int8_model_again_is_refused_not_reported_as_fp32(tiny_run, tmp_path):
    """quantize_onnx.py given model.int8.onnx (a slip of the shell): it quantized it again and reported the int8 model
    as the fp32 one. Its metadata says it is quantized (onnxruntime reads it here), so it is refused, naming it."""
    import onnxruntime as ort

    from finetune.deploy import ModelError, quantize_int8, quantize_stage

    int8 = tmp_path / "model.int8.onnx"
    quantize_int8(tiny_run / "results/finetune/seed0/model.onnx", int8)
    said = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert said["quantization"].startswith("dynamic")
    with pytest.raises(ModelError, match=rf"^{re.escape(str(int8))} is quantized already \(its metadata: "
                                         rf"quantization {re.escape(said['quantization'])}\): give the fp32 model.onnx"):
        quantize_stage(int8, tiny_run / "resources/splits/target.csv", tmp_path / "again.onnx",
                       tmp_path / "quantization.json", log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx"]


def test_quantizing_where_onnx_is_not_installed_says_to_install_it(tiny_run, tmp_path):
    """A deployment venv of onnxruntime alone (as "Predict on new images" installs): quantize_onnx.py ended in a
    ModuleNotFoundError traceback. It says what to install, and writes nothing."""
    script = str(REPO / "workflow/scripts/quantize_onnx.py")
    without_onnx = ("import runpy, sys; sys.modules['onnx'] = None; sys.argv = ['quantize_onnx.py'] + sys.argv[1:]; "
                    f"runpy.run_path({script!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", without_onnx, "--onnx", str(tiny_run / "results/finetune/seed0/model.onnx"),
                             "--split", str(tiny_run / "resources/splits/target.csv"), "--out-onnx", str(tmp_path / "m.int8.onnx"),
                             "--out-report", str(tmp_path / "q.json")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "error: quantizing needs the onnx package besides onnxruntime, which cannot be imported (" in result.stderr
    assert result.stderr.rstrip().endswith("`pip install onnx`"), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_predicting_with_the_pytorch_checkpoint_says_to_give_the_onnx_model(tiny_run, tmp_path):
    """`--model model.pt` was told the file was cut short or damaged, and to make it again: it is the run's PyTorch
    checkpoint, whole. The message says so and names the file to give."""
    write_images(tmp_path / "imgs", n=1)
    checkpoint = tiny_run / "results/finetune/seed0/model.pt"
    result = run_predict("--model", str(checkpoint), "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o.csv"))
    assert result.returncode == 1
    assert (f"cannot load ONNX model {checkpoint}: it is a PyTorch checkpoint (model.pt, a .pth), not an ONNX model; "
            "give the run's model.onnx") in result.stderr, result.stderr
    assert "damaged" not in result.stderr and not (tmp_path / "o.csv").exists()


def test_quantize_and_predict_rules(tiny_run_copy, monkeypatch):
    """export.quantize and predict.images on a finished run: only the new jobs run."""
    workdir = tiny_run_copy
    n_good = write_images(workdir / "incoming")
    config = tiny_config(workdir, name="deploy.yaml", export={"quantize": True},
                         predict={"images": "incoming", "experiment": "feature_extract", "seed": 0, "model": "int8", "top_k": 2})
    result = run_snakemake(workdir, config)
    assert sorted(jobs_run(result.stdout)) == ["all", "predict"] + ["quantize_onnx"] * 3, result.stdout[-3000:]
    made = result.stdout

    for run in RUNS:
        folder = workdir / "results" / run
        report = json.loads((folder / "quantization.json").read_text())
        assert report["size_bytes"]["int8"] < 0.35 * report["size_bytes"]["fp32"]
        assert report["size_bytes"]["fp32"] == (folder / "model.onnx").stat().st_size
        assert report["size_bytes"]["int8"] == (folder / "model.int8.onnx").stat().st_size
        assert report["size_bytes"]["ratio"] == pytest.approx(report["size_bytes"]["int8"] / report["size_bytes"]["fp32"],
                                                              abs=1e-4)
        for batch in ("batch_1", "batch_64"):
            speed = report["speed"][batch]
            assert speed["fp32_img_per_s"] > 0 and speed["int8_img_per_s"] > 0
            # the speedup is int8's rate over fp32's (the rates are rounded to 0.1 img/s in the report)
            assert speed["speedup"] == pytest.approx(speed["int8_img_per_s"] / speed["fp32_img_per_s"], rel=0.01, abs=0.002)
        # Where int8 was slower at every batch (as on this project's CPUs), the job's log says so.
        slower = all(s["int8_img_per_s"] < s["fp32_img_per_s"] for s in report["speed"].values())
        log = workdir / "results" / "logs" / "quantize_onnx" / f"{run}.log"
        assert ("warning: the int8 model is slower than fp32" in log.read_text()) == slower, log.read_text()
        # Both models' accuracy counted here: each run by onnxruntime on the test images, against the labels; the
        # int8 model one image at a time (dynamic quantization scales each activation over its whole batch).
        accuracy = report["test_accuracy"]
        test = held_out(workdir)
        x = model_inputs(test["path"], onnx_preprocessing(folder / "model.onnx"))
        one_by_one = np.concatenate([onnx_logits(folder / "model.int8.onnx", x[i : i + 1]) for i in range(len(x))])
        fp32_logits = onnx_logits(folder / "model.onnx", x)
        counted = {kind: float(np.mean([CLASSES[i] == t for i, t in zip(logits.argmax(1), test["class_name"])]))
                   for kind, logits in (("fp32", fp32_logits), ("int8", one_by_one))}
        assert accuracy["n_images"] == len(test)
        assert accuracy["fp32"] == pytest.approx(counted["fp32"], abs=1e-9)
        assert accuracy["int8"] == pytest.approx(counted["int8"], abs=1e-9)
        assert accuracy["change"] == pytest.approx(counted["int8"] - counted["fp32"], abs=1e-9)
        agreement = float(np.mean(fp32_logits.argmax(1) == one_by_one.argmax(1)))
        assert accuracy["top1_agreement"] == pytest.approx(agreement, abs=1e-9)
        # The int8 model keeps the metadata a consumer needs.
        meta = ort.InferenceSession(str(folder / "model.int8.onnx"),
                                    providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
        assert json.loads(meta["classes"]) == CLASSES and "mean" in meta
        assert meta["quantization"].endswith("run one image at a time, as an image's logits depend on the other images "
                                             "of its batch"), meta["quantization"]
    # The test images decoded and scored a chunk at a time (the job's memory bounded by the chunk, not by the test
    # set): over chunks of 5, the figures counted above.
    import finetune.deploy as deploy

    monkeypatch.chdir(workdir)
    monkeypatch.setattr(deploy, "QUANTIZE_CHUNK", 5)
    folder = workdir / "results" / RUNS[0]
    chunked = deploy.quantize_stage(folder / "model.onnx", "resources/splits/target.csv", workdir / "q.int8.onnx",
                                    workdir / "q.json", min_seconds=0.01, log=lambda _: None)
    assert chunked["test_accuracy"] == json.loads((folder / "quantization.json").read_text())["test_accuracy"]
    assert len(held_out(workdir)) > 5

    # The int8 model's predictions do not depend on the batch: the same at batch 1 and 64, and as one image alone.
    int8 = workdir / "results/feature_extract/seed0/model.int8.onnx"
    tables = {}
    for batch in (1, 64):
        out = workdir / f"int8_b{batch}.csv"
        result = run_predict("--model", str(int8), "--images", str(workdir / "incoming"), "--out", str(out),
                             "--batch-size", str(batch))
        assert result.returncode == 0, result.stdout + result.stderr
        tables[batch] = pd.read_csv(out, keep_default_na=False)
        # asked for batches of 64, the log says the int8 model runs one image at a time; at batch 1 nothing to say
        assert ("it runs one image at a time; batch size 64 is how many are decoded at once" in result.stderr) \
            == (batch == 64), result.stderr
    assert tables[1].equals(tables[64])
    # The loader knows the quantized model is batch-dependent (the fp32 one is not), and asked for batches of 64 it
    # gives each image's logits as a session run on that image alone gives them, bit for bit.
    from finetune.deploy import OnnxClassifier

    assert OnnxClassifier.load(int8).batch_dependent and not OnnxClassifier.load(int8.with_name("model.onnx")).batch_dependent
    classifier = OnnxClassifier.load(int8)
    test_pixels = np.stack([classifier.pixels(ref) for ref in held_out(workdir)["path"]])
    one_at_a_time = np.concatenate([classifier.session.run(None, {classifier.input_name: classifier.inputs(test_pixels[i : i + 1])})[0]
                                    for i in range(len(test_pixels))])
    assert np.array_equal(classifier.logits(test_pixels, batch_size=64), one_at_a_time)
    good = tables[64][tables[64]["error"] == ""]
    alone = model_inputs(list(good["path"]), onnx_preprocessing(int8))
    expected = np.concatenate([onnx_logits(int8, alone[i : i + 1]) for i in range(len(alone))])
    assert list(good["predicted"]) == [CLASSES[i] for i in expected.argmax(1)]

    table = pd.read_csv(workdir / "results/predictions/feature_extract/seed0/predictions.csv", keep_default_na=False)
    assert len(table) == n_good + 1 and (table["error"] != "").sum() == 1
    assert "top2_class" in table.columns and "top3_class" not in table.columns
    assert "broken.png" in (workdir / "results/logs/predict/feature_extract/seed0.log").read_text()
    # The job succeeds with the others classified; the run's end says which predictions lack images, not only its log.
    first = table.loc[table["error"] != "", "error"].iloc[0]
    assert (f"note: results/predictions/feature_extract/seed0/predictions.csv: 1 of {n_good + 1} image(s) could not be "
            f"read and have no prediction (their rows' error column says why; the first: {first})") in made, made[-3000:]

    # predict.batch_size says how many images go to onnxruntime at once, not what they are classified as: no rerun.
    faster = tiny_config(workdir, name="deploy.yaml", export={"quantize": True},
                         predict={"images": "incoming", "experiment": "feature_extract", "seed": 0, "model": "int8",
                                  "top_k": 2, "batch_size": 5})
    assert jobs_run(run_snakemake(workdir, faster, "-n").stdout) == []
    # A file no job reads, at the top of predict.images, changes nothing (the folder is not an input by its time).
    time.sleep(0.05)
    (workdir / "incoming" / ".DS_Store").write_bytes(b"finder")
    (workdir / "incoming" / "notes.txt").write_text("new photos")
    assert jobs_run(run_snakemake(workdir, config, "-n").stdout) == []
    # An image added in a folder below predict.images makes the predictions stale, and nothing else.
    time.sleep(0.05)
    shutil.copy(workdir / "incoming" / "item0.png", workdir / "incoming" / "nested" / "new.png")
    assert sorted(jobs_run(run_snakemake(workdir, config, "-n").stdout)) == ["all", "predict"]
    # A predict.images left without images is refused at start, and the earlier predictions stay as they were.
    predictions = workdir / "results/predictions/feature_extract/seed0/predictions.csv"
    before = predictions.read_bytes()
    shutil.rmtree(workdir / "incoming")
    (workdir / "incoming" / "nested").mkdir(parents=True)
    (workdir / "incoming" / "notes.txt").write_text("new photos")
    refused = run_snakemake(workdir, config, check=False)
    assert refused.returncode != 0 and "predict.images: no image files in incoming" in refused.stdout, refused.stdout[-2000:]
    assert "nothing ran, and every earlier result is kept" in refused.stdout and "rule predict" not in refused.stdout
    assert predictions.read_bytes() == before
    # It blocks only the runs that make predictions (an inbox emptied once classified stopped every command, a report,
    # training): another target runs, with a note saying why the predictions would not be made.
    other = run_snakemake(workdir, config, "--printshellcmds", "results/feature_extract/seed0/metrics.json")
    assert ("note: predict.images: no image files in incoming" in other.stdout and "a run that makes the predictions "
            "stops at start" in other.stdout), other.stdout[-2000:]
    # So is one whose image files all fail to decode (a JPEG cut short, an empty file, text named .png): the job would
    # fail on them.
    from io import BytesIO

    from PIL import Image

    jpeg = BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    (workdir / "incoming" / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (workdir / "incoming" / "nested" / "empty.jpg").write_bytes(b"")
    (workdir / "incoming" / "notes.png").write_text("not an image")
    refused = run_snakemake(workdir, config, check=False)
    assert refused.returncode != 0 and ("predict.images: none of the 3 image file(s) of incoming can be read as an image "
                                        "(the first: incoming/cut.jpg: ") in refused.stdout, refused.stdout[-2000:]
    assert predictions.read_bytes() == before
    # And one that opens but has more pixels than the job decodes (a small file: a 1-bit PNG of one colour): the check
    # opened it and passed, the job refused it and failed, and the earlier predictions were removed.
    Image.new("1", (20_000, 15_001), 1).save(workdir / "incoming" / "zz_big.png")
    refused = run_snakemake(workdir, config, check=False)
    assert refused.returncode != 0 and "predict.images: none of the 4 image file(s) of incoming" in refused.stdout, \
        refused.stdout[-2000:]
    assert "rule predict" not in refused.stdout and predictions.read_bytes() == before
    # And one whose pixels decode but whose EXIF block does not (a WebP's, its TIFF header damaged): read as stored, as
    # a viewer that cannot read the block shows it (the job failed on it, after the check at start had let it through).
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turned
    webp = BytesIO()
    halves = np.zeros((30, 40, 3), dtype=np.uint8)
    halves[:, :20] = (200, 10, 10)
    halves[:, 20:] = (10, 10, 200)
    Image.fromarray(halves).save(webp, "WEBP", exif=exif.tobytes(), lossless=True)
    data = webp.getvalue()
    header = data.find(b"MM\x00*") if b"MM\x00*" in data else data.find(b"II*\x00")
    photo = workdir / "incoming" / "zzz_photo.webp"
    photo.write_bytes(data[:header] + b";" + data[header + 1:])
    run_snakemake(workdir, config)
    rows = pd.read_csv(predictions).set_index("path")
    model = workdir / "results/feature_extract/seed0/model.int8.onnx"  # predict.model: int8, one image at a time
    prep = onnx_preprocessing(model)
    stored, turned = Image.open(photo).convert("RGB"), Image.fromarray(halves).transpose(Image.Transpose.ROTATE_270)
    logits = np.concatenate([onnx_logits(model, normalize(preprocess(image, prep["resize_size"], prep["crop_size"])[None],
                                                          prep["mean"], prep["std"])) for image in (stored, turned)])
    assert np.abs(logits[0] - logits[1]).max() > 1e-3  # the two would be told apart
    stored_probs = np.exp(logits[0] - logits[0].max()) / np.exp(logits[0] - logits[0].max()).sum()
    row = rows.loc["incoming/zzz_photo.webp"]
    assert row["predicted"] == prep["classes"][int(logits[0].argmax())], row
    assert row["probability"] == pytest.approx(stored_probs.max(), abs=1e-5), (row, stored_probs)


def test_predict_config_is_checked_before_anything_runs(tiny_run_copy):
    workdir = tiny_run_copy
    config = tiny_config(workdir, name="bad.yaml", predict={"images": "x", "experiment": "nope"})
    result = run_snakemake(workdir, config, "-n", check=False)
    assert result.returncode != 0 and "predict.experiment: 'nope' is not an experiment" in result.stdout
    config = tiny_config(workdir, name="bad2.yaml", predict={"images": "x", "model": "int8"})
    result = run_snakemake(workdir, config, "-n", check=False)
    assert result.returncode != 0 and "predict.model: int8 needs export.quantize: true" in result.stdout
    config = tiny_config(workdir, name="bad3.yaml", predict={"images": "incoming/", "experiment": "finetune", "seed": 0})
    result = run_snakemake(workdir, config, "-n", check=False)
    assert result.returncode != 0 and (f"predict.images: incoming/ does not exist (relative to the working directory "
                                       f"{workdir})") in result.stdout, result.stdout[-2000:]
    assert "MissingInputException" not in result.stdout
    # given on the command line: the refusal says so, as the config's other refusals do
    result = run_snakemake(workdir, config, "-n", "--config", "predict={images: inbox, experiment: finetune, seed: 0}",
                           check=False)
    assert result.returncode != 0 and (f"predict.images: inbox does not exist (relative to the working directory "
                                       f"{workdir}): ") in result.stdout and "(set in --config)" in result.stdout, \
        result.stdout[-2000:]
    # and from a folder holding config/config.yaml, the demo's, which yours is merged over: named as yours, not the
    # demo's (whose predict.images is null: it never sets the folder refused)
    from helpers import copy_of_the_workflow

    snakefile = copy_of_the_workflow(workdir / "repo", with_config=True)
    mine = workdir / "repo" / "my.yaml"
    mine.write_text("predict: {images: inbox_missing, experiment: finetune, seed: 0}\n")
    result = run_snakemake(workdir / "repo", mine, "-n", check=False, snakefile=snakefile)
    assert result.returncode != 0 and "predict.images: inbox_missing does not exist" in result.stdout \
        and f"(set in {mine})" in result.stdout and "the demo's" not in result.stdout, result.stdout[-2000:]


def test_predict_chooses_the_run_with_the_best_validation_figure(tiny_run, tmp_path):
    """--choose-from (rule predict_selected): the model of the run whose best-epoch validation figure is best,
    computed here from each run's history.csv, and the predictions that model alone gives."""
    images = tmp_path / "images"
    write_images(images)
    folders = [tiny_run / f"results/{run}/seed0" for run in ("finetune", "feature_extract", "scratch")]
    # each run's best epoch: the highest val_accuracy, a tie to the lower val_loss; runs tied likewise, then the first
    best = {f: max(zip(h["val_accuracy"], -h["val_loss"])) for f in folders for h in [pd.read_csv(f / "history.csv")]}
    best_val = {f: best[f][0] for f in folders}
    expected = max(folders, key=best.get)
    chosen, named = tmp_path / "chosen.csv", tmp_path / "named.csv"
    result = run_predict("--choose-from", *map(str, folders), "--images", str(images), "--out", str(chosen),
                         "--out-selection", str(tmp_path / "selection.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "modules: False True True" in result.stdout, result.stdout  # still no torch
    selection = json.loads((tmp_path / "selection.json").read_text())
    assert selection["folder"] == str(expected) and selection["metric"] == "val_accuracy"
    assert selection["value"] == pytest.approx(best_val[expected])
    assert run_predict("--model", str(expected / "model.onnx"), "--images", str(images), "--out", str(named)).returncode == 0
    assert chosen.read_text() == named.read_text()
    summary = json.loads((tiny_run / "results/selected.json").read_text())
    assert {experiment: s["run"] for experiment, s in summary.items()} == {f.parent.name: f.parent.name for f in folders}


def test_predict_images_naming_the_workflows_own_outputs_is_refused_keeping_the_earlier_predictions(tiny_run_copy):
    """predict.images naming a predictions.csv of this workflow (its `path` column makes it a list of images): the job
    reading the file it replaces. Snakemake said "Cyclic dependency on rule predict" and kept the old predictions
    ("Nothing to be done"), or for predict_selected removed them and selection.json and failed on "Missing files".
    A folder holding results/ (`.`) classified the workflow's figures. Each is refused at start, the earlier files
    byte for byte as they were."""
    workdir = tiny_run_copy
    write_images(workdir / "incoming")
    made = {"selected": {"experiment": None, "seed": None}, "finetune/seed0": {"experiment": "finetune", "seed": 0}}
    for folder, choice in made.items():
        run_snakemake(workdir, tiny_config(workdir, name="ok.yaml", predict={"images": "incoming", **choice}))
    outputs = sorted(p for p in (workdir / "results" / "predictions").rglob("*") if p.is_file())
    assert {p.name for p in outputs} == {"predictions.csv", "selection.json"}, outputs
    before = {p: p.read_bytes() for p in outputs}
    for folder, choice in made.items():
        for images in (f"results/predictions/{folder}/predictions.csv", f"{workdir}/results/predictions/{folder}",
                       "results/predictions/selected/selection.json"):
            config = tiny_config(workdir, name="loop.yaml", predict={"images": images, **choice})
            result = run_snakemake(workdir, config, check=False)
            assert result.returncode != 0 and (
                f"predict.images: {images} is under results/predictions/, where the predict rules write: the job would "
                f"read the file it replaces; nothing ran, and the earlier predictions are kept") in result.stdout, \
                result.stdout[-3000:]
    for images in (".", str(workdir), "./"):
        config = tiny_config(workdir, name="dot.yaml", predict={"images": images})
        result = run_snakemake(workdir, config, check=False)
        assert result.returncode != 0 and (
            f"predict.images: {images} holds the workflow's outputs (resources/ and results/): their figures would be "
            "classified as images") in result.stdout, result.stdout[-3000:]
    config = tiny_config(workdir, name="figures.yaml", predict={"images": "results/finetune/seed0"})
    result = run_snakemake(workdir, config, check=False)
    assert result.returncode != 0 and ("predict.images: results/finetune/seed0 is in the workflow's outputs "
                                       "(results/finetune/seed0/): their figures would be classified") in result.stdout, \
        result.stdout[-3000:]
    assert {p: p.read_bytes() for p in outputs} == before
    # A folder beside results/ is read as before (the refusal is about the workflow's own outputs alone).
    assert run_snakemake(workdir, tiny_config(workdir, name="ok.yaml", predict={"images": "incoming"}), "-n").returncode == 0
