"""The export's parity gate (finetune.export.parity_check) on small real networks exported here with
torch.onnx and run by a real onnxruntime session: PyTorch's side is the network or the network with a known shift
added to some of its logits, so the difference the gate must see is known beforehand. And the int8 model's scoring
against the fp32 one (finetune.deploy._compare_accuracy) on classifiers whose predictions are set here."""

import numpy as np
import pytest
import torch

from finetune.export import DEFAULT_RTOL, PARITY_CHUNK, parity_check


def exported(tmp_path, net: torch.nn.Module, shape=(3, 8, 8)):
    path = tmp_path / "net.onnx"
    torch.onnx.export(net.eval(), (torch.zeros(1, *shape),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    return path


class Shifted(torch.nn.Module):
    """``net``'s logits, plus ``shift`` on the images whose first pixel is above ``marker``: on every class, or on
    class ``only`` alone."""

    def __init__(self, net, shift, marker=-np.inf, only=None):
        super().__init__()
        self.net, self.shift, self.marker, self.only = net, shift, marker, only

    def forward(self, x):
        logits = self.net(x)
        shift = self.shift * (x[:, :1, 0, 0] > self.marker)
        if self.only is not None:
            shift = shift * torch.nn.functional.one_hot(torch.tensor(self.only), logits.shape[1])
        return logits + shift


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 3)).eval()


def test_parity_holds_every_sampled_image_to_the_tolerance(tmp_path):
    """An export that agrees on the first parity_batch images and is 0.5 off on the others (PyTorch's side shifted
    there, marked by one pixel) fails the check, with max_abs_diff the shift; the faithful one passes. So does one
    off on the last image only, past two chunks of PARITY_CHUNK images; the report's largest logit is that image's."""
    net = small_net()
    path = exported(tmp_path, net)
    inputs = np.random.default_rng(0).standard_normal((100, 3, 8, 8)).astype(np.float32)
    inputs[16:, 0, 0, 0] = 100.0
    good, bad = (parity_check(model, path, inputs, 16, 1e-4) for model in (net, Shifted(net, 0.5, marker=50)))
    assert good["passed"] and good["max_abs_diff"] < 1e-4 and good["top1_agreement"] == 1.0, good
    assert bad["checks"]["batch_1"]["passed"] and bad["checks"]["batch_16"]["passed"], bad  # the first 16 agree
    assert not bad["passed"] and bad["max_abs_diff"] == pytest.approx(0.5, abs=1e-3), bad
    assert bad["checks"]["all_100"]["images"] == 100 and not bad["checks"]["all_100"]["passed"]
    # Two whole chunks of the check and one image more, that one alone off: the last chunk is checked too.
    n = 2 * PARITY_CHUNK + 1
    inputs = np.random.default_rng(4).standard_normal((n, 3, 8, 8)).astype(np.float32)
    inputs[-1] *= 100  # its logits the largest too
    inputs[-1, 0, 0, 0] = 100.0
    last_off = parity_check(Shifted(net, 0.5, marker=50), path, inputs, 16, 1e-4)
    with torch.no_grad():  # the largest |logit| PyTorch gives any image
        largest = float(Shifted(net, 0.5, marker=50)(torch.from_numpy(inputs)).abs().max())
    assert last_off["max_logit"] == pytest.approx(largest, rel=1e-6), last_off
    assert last_off["checks"]["batch_16"]["max_logit"] < largest / 10, last_off
    assert not last_off["passed"] and last_off["max_abs_diff"] == pytest.approx(0.5, abs=1e-3), last_off
    assert last_off["checks"][f"all_{n}"]["images"] == n and not last_off["checks"][f"all_{n}"]["passed"], last_off


@pytest.mark.parametrize("shift, passes", [(5e-4, False), (5e-5, True), (1.5e-4, False), (2e-5, True)])
def test_the_absolute_tolerance_is_the_one_given(tmp_path, shift, passes):
    """With rtol 0 a logit passes where |onnxruntime - PyTorch| <= tolerance: a shift of every logit by 5 times the
    tolerance (or 1.5 times) fails, by half of it (or a fifth) passes. The export's own rounding (~1e-7 here) is
    far below the margins."""
    net = small_net()
    path = exported(tmp_path, net)
    inputs = np.random.default_rng(1).standard_normal((20, 3, 8, 8)).astype(np.float32)
    report = parity_check(Shifted(net, shift), path, inputs, 4, tolerance=1e-4, rtol=0.0)
    assert report["max_abs_diff"] == pytest.approx(shift, abs=1e-6), report
    assert report["passed"] is passes, report
    assert all(check["passed"] is passes for check in report["checks"].values()), report


def test_a_difference_of_exactly_the_tolerance_passes(tmp_path):
    """The bound is inclusive: logits of exactly 1 (a layer of zero weights, bias 1), shifted by exactly 0.25 on
    PyTorch's side (all three exact in float32), pass a tolerance of 0.25 and fail one a float32 step below it."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3)).eval()
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.fill_(1.0)
    path = exported(tmp_path, net)
    inputs = np.random.default_rng(5).standard_normal((4, 3, 8, 8)).astype(np.float32)
    exact = parity_check(Shifted(net, 0.25), path, inputs, 2, tolerance=0.25, rtol=0.0)
    assert exact["passed"] and exact["max_abs_diff"] == 0.25, exact
    below = parity_check(Shifted(net, 0.25), path, inputs, 2, tolerance=float(np.nextafter(np.float32(0.25), 0)), rtol=0.0)
    assert not below["passed"], below


def test_the_relative_tolerance_scales_with_each_image_s_own_logits(tmp_path):
    """rtol's scale is the largest |logit| of the image the logit belongs to. Beside an image whose logits reach ~1e4,
    an image whose logits are ~1 and 0.01 off is refused: its own bound is tolerance + rtol x ~1 ~ 1.1e-4, where a
    scale taken over all the images (1e4 x 1e-5 = 0.1) would let 0.01 through. The faithful export of the same two
    images passes (the large image's rounding is within its own, large, bound)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3)).eval()
    path = exported(tmp_path, net)
    rng = np.random.default_rng(2)
    large, small = (rng.standard_normal((3, 8, 8)).astype(np.float32) * scale for scale in (1e5, 1.0))
    inputs = np.stack([large, small])
    with torch.no_grad():
        logits = net(torch.from_numpy(inputs)).double().numpy()
    own_scale = np.abs(logits).max(axis=1)
    assert own_scale[0] > 1e3 and own_scale[1] < 10, own_scale  # the premise: logits of two sizes
    small_bound = 1e-4 + DEFAULT_RTOL * own_scale[1]
    assert small_bound < 0.01 < 1e-4 + DEFAULT_RTOL * own_scale.max()  # per image refuses 0.01; over both would not

    faithful = parity_check(net, path, inputs, 2, tolerance=1e-4)
    assert faithful["passed"], faithful
    shifted = parity_check(Shifted(net, 0.01), path, inputs, 2, tolerance=1e-4)
    # shifting every logit of both images: the large one's bound (~1e-4 + 1e-5 x 1e4) still holds 0.01, the small one's not
    assert not shifted["passed"] and not shifted["checks"]["all_2"]["passed"], shifted
    assert shifted["checks"]["batch_1"]["passed"], shifted  # the large image alone
    assert shifted["max_abs_diff"] == pytest.approx(0.01, abs=2e-3), shifted


def test_top1_agreement_is_the_share_of_images_both_sides_give_the_same_class(tmp_path):
    """PyTorch's side raises class 1 on every third image, which turns some of their top classes to 1 and not
    onnxruntime's: the agreement is the share of the 150 images (three chunks of the check) on which the two sides'
    largest logits, computed here by each, are the same class."""
    import onnxruntime as ort

    net = small_net()
    path = exported(tmp_path, net)
    inputs = np.random.default_rng(3).standard_normal((150, 3, 8, 8)).astype(np.float32)
    inputs[::3, 0, 0, 0] = 3.0  # (the network's top class is 2 on all; class 1 is 0.13 to 0.3 below it there)
    raised = Shifted(net, 0.2, marker=2.5, only=1)
    report = parity_check(raised, path, inputs, 16, tolerance=1e-4)
    with torch.no_grad():
        ours = raised(torch.from_numpy(inputs)).numpy().argmax(1)
    theirs = ort.InferenceSession(str(path)).run(None, {"x": inputs})[0].argmax(1)
    expected = float((ours == theirs).mean())
    assert 0.5 < expected < 1, expected  # the premise: the raise turns the top class of some images, not all
    assert report["top1_agreement"] == pytest.approx(expected, abs=1e-12), report
    assert not report["passed"] and report["n_images"] == 150


class Predicting:
    """A classifier of two classes that predicts ``preds`` for the images, in order (pixels of zeros, no errors)."""

    classes, path = ["a", "b"], "model.onnx"

    def __init__(self, preds):
        self.preds, self.at = np.array(preds), 0

    def decode(self, refs, threads):
        return np.zeros((len(refs), 3, 2, 2), np.float32), {}

    def logits(self, pixels):
        chunk = self.preds[self.at : self.at + len(pixels)]
        self.at += len(pixels)
        return np.eye(2, dtype=np.float32)[chunk]


def test_quantization_scores_each_model_and_their_agreement_on_the_test_images(tmp_path):
    """Test labels 0 1 1 0; fp32 predicts 0 0 1 0 (3 of 4 right), int8 0 1 0 1 (2 of 4): they agree on the first image
    alone, 1 of 4, which is neither model's accuracy. Train and val rows are not scored."""
    import pandas as pd

    from finetune.deploy import _compare_accuracy

    labels, fp32, int8 = [0, 1, 1, 0], [0, 0, 1, 0], [0, 1, 0, 1]
    rows = [(f"t{i}.png", label, "ab"[label], "test") for i, label in enumerate(labels)]
    rows += [("x.png", 0, "a", "train"), ("y.png", 1, "b", "val")]
    pd.DataFrame(rows, columns=["path", "label", "class_name", "split"]).to_csv(tmp_path / "split.csv", index=False)
    accuracy, _ = _compare_accuracy(Predicting(fp32), Predicting(int8), tmp_path / "split.csv", 1, keep=2)
    right = lambda preds: sum(p == y for p, y in zip(preds, labels)) / len(labels)  # noqa: E731
    agree = sum(a == b for a, b in zip(fp32, int8)) / len(labels)
    assert (accuracy["fp32"], accuracy["int8"], accuracy["top1_agreement"]) == (right(fp32), right(int8), agree)
    assert (right(fp32), right(int8), agree) == (0.75, 0.5, 0.25) and accuracy["n_images"] == 4
    assert accuracy["change"] == pytest.approx(right(int8) - right(fp32))


def test_the_parity_images_are_at_most_256_test_images_spread_over_the_whole_test_split(tmp_path):
    """Export checks onnxruntime on a sample of the test split, never a second pass over all of it: of 300 test
    images, 256, each another, in file order, from the first to the last with no gap wider than two, read from
    the decoded file as decoded here when there is none; on a smaller split, every test image."""
    import pandas as pd

    from faults import make_images, run_split
    from finetune.images import Preprocessing
    from finetune.stages import PARITY_SAMPLE, parity_images
    from finetune.store import write_decoded
    from finetune.tensors import decode_images

    make_images(tmp_path / "data", {"cat": 150, "dog": 150}, size=8)
    assert run_split({"format": "imagefolder", "path": str(tmp_path / "data"), "test_fraction": 0.9,
                      "val_fraction": 0.05}, tmp_path / "split").returncode == 0
    split = tmp_path / "split" / "split.csv"
    frame = pd.read_csv(split)
    test_paths = frame[frame["split"] == "test"]["path"].tolist()
    assert len(test_paths) > PARITY_SAMPLE == 256
    prep = Preprocessing.raw(8)
    every = decode_images(test_paths, prep, 1).permute(0, 2, 3, 1).numpy()  # each test image, decoded here
    npy, info = tmp_path / "decoded" / "images.npy", tmp_path / "decoded" / "info.json"
    write_decoded(split, 8, 8, npy, info, log=lambda _: None)
    for decoded in (None, (npy, info)):
        picked = parity_images(split, prep, 1, decoded)
        assert picked.shape == (256, 8, 8, 3) and picked.dtype == np.uint8
        found = [next(i for i, image in enumerate(every) if np.array_equal(image, p)) for p in picked]
        assert found[0] == 0 and found[-1] == len(test_paths) - 1
        assert all(0 < b - a <= 2 for a, b in zip(found, found[1:])), found
    small = frame[(frame["split"] != "test") | frame["path"].isin(test_paths[:40])]
    small.to_csv(tmp_path / "small.csv", index=False)
    assert np.array_equal(parity_images(tmp_path / "small.csv", prep, 1), every[:40])
