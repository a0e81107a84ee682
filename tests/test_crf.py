"""eval.crf: the dense CRF wrapper on synthetic images, the models' CRF inputs, and `fussfast run`
with the CRF on in both tasks (metrics.json, the CLI summary, the report)."""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("pydensecrf")

from fussfast.config import ConfigError, load_config  # noqa: E402
from fussfast.eval import DenseCRF  # noqa: E402
from fussfast.features import FeatureSet  # noqa: E402
from fussfast.losses import CorrespondenceConfig  # noqa: E402
from fussfast.outputs import check_resumable  # noqa: E402
from fussfast.tasks import SiteModel, SupervisedModel  # noqa: E402


def two_regions(seed, H=23, W=31, flip=0.2):
    """A dark left and a bright right region (with slight pixel noise), their true labels, and
    unaries that are right with probability 0.7 except at a ``flip`` share of pixels (salt and
    pepper), where they are as confident in the wrong class."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((H, W), np.int64)
    truth[:, W // 2 + rng.integers(-3, 4):] = 1
    image = np.where(truth[..., None] == 1, 200, 40) + rng.integers(-6, 7, (H, W, 3))
    noisy = np.where(rng.random((H, W)) < flip, 1 - truth, truth)
    probs = np.where(np.arange(2)[:, None, None] == noisy, 0.7, 0.3).astype(np.float32)
    return image.astype(np.uint8), probs, truth


@pytest.mark.parametrize("seed", range(3))
def test_crf_cleans_salt_and_pepper_unaries(seed):
    image, probs, truth = two_regions(seed)
    wrong_before = int((probs.argmax(0) != truth).sum())
    refined = DenseCRF().refine(image, probs)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1, atol=1e-4)  # marginals
    wrong_after = int((refined.argmax(0) != truth).sum())
    assert wrong_before > 50 and wrong_after < wrong_before / 4, (wrong_before, wrong_after)


def test_crf_follows_the_image_edge():
    """Unaries that know nothing on the right half take the class of the pixels of the same colour."""
    image, probs, truth = two_regions(7, flip=0.0)
    probs[:, :, 20:] = 0.5
    probs[:, 10:, :] = 0.5  # the lower rows too: only the colour tells them apart
    refined = DenseCRF().refine(image, probs).argmax(0)
    assert (refined != truth).mean() < 0.05
    off = DenseCRF(bilateral_weight=0.0, gaussian_weight=0.0).refine(image, probs)  # no pairwise terms
    np.testing.assert_allclose(off, probs, atol=1e-5)


def test_crf_labels_batch_and_checks():
    images, log_probs, truths = [], [], []
    for seed in range(3):
        image, probs, truth = two_regions(seed)
        images.append(torch.from_numpy(image).permute(2, 0, 1))
        log_probs.append(torch.from_numpy(probs).log())
        truths.append(torch.from_numpy(truth))
    labels = DenseCRF().labels(torch.stack(images), torch.stack(log_probs))
    assert labels.shape == (3, 23, 31) and labels.dtype == torch.int64
    assert (labels != torch.stack(truths)).float().mean() < 0.05
    crf = DenseCRF()
    image, probs, _ = two_regions(0)
    with pytest.raises(ValueError, match="uint8"):
        crf.refine(image.astype(np.float32), probs)
    with pytest.raises(ValueError, match=r"\[K, H, W\]"):
        crf.refine(image, probs[:, :-1])
    with pytest.raises(ValueError, match="finite"):
        crf.refine(image, np.full_like(probs, np.nan))
    with pytest.raises(ValueError, match="differ"):
        crf.labels(torch.stack(images)[:2], torch.stack(log_probs))


def test_unsupervised_log_probs_are_stego_cluster_softmax():
    torch.manual_seed(0)
    model = SiteModel(12, 7, 5, loss=CorrespondenceConfig.preset("cityscapes"), backend="reference")
    feats, flipped = torch.randn(2, 12, 3, 5), torch.randn(2, 12, 3, 5)
    out = model.log_probs(feats, flipped, (9, 13), alpha=2.5)
    with torch.no_grad():  # float64: flip-averaged codes, bilinear upsampling, scaled cosines, softmax
        head = copy.deepcopy(model.head).double()
        code = (head(feats.double()) + head(flipped.double()).flip(-1)) / 2
        code = F.interpolate(code, size=(9, 13), mode="bilinear", align_corners=False)
        cos = torch.einsum("bchw,kc->bkhw", F.normalize(code, dim=1), F.normalize(model.probe.clusters.double(), dim=1))
        expected = torch.log(torch.exp(2.5 * cos) / torch.exp(2.5 * cos).sum(1, keepdim=True))
    assert out.shape == (2, 5, 9, 13)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)


def test_supervised_log_probs_agree_with_predict():
    torch.manual_seed(1)
    model = SupervisedModel(12, 4, embed_dim=6, objective="ce", backend="reference")
    feats, flipped = torch.randn(3, 12, 3, 5), torch.randn(3, 12, 3, 5)
    out = model.log_probs(feats, flipped, (7, 11), alpha=2.0)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(3, 7, 11))
    assert torch.equal(out.argmax(1), model.predict(feats, flipped, (7, 11)))


def test_scoring_with_crf_needs_images():
    torch.manual_seed(2)
    model = SupervisedModel(12, 3, embed_dim=6, objective="ce", backend="reference")
    data = FeatureSet(torch.randn(2, 12, 2, 2), torch.randn(2, 12), torch.randint(0, 3, (2, 8, 8)))
    assert set(model.scores(data, 3)) == {"miou", "acc", "dice"}
    with pytest.raises(ValueError, match="eval.crf"):
        model.scores(data, 3, DenseCRF())


def test_eval_config_keys(tmp_path, monkeypatch):
    config = load_config(None, ["eval.crf=true", "eval.crf_iterations=3"])
    assert config.eval.crf and config.eval.crf_iterations == 3 and config.eval.crf_bilateral_xy == 67.0
    with pytest.raises(ConfigError, match="'eval.crf_bilateral_rgb' must be > 0"):
        load_config(None, ["eval.crf_bilateral_rgb=0"])
    with pytest.raises(ConfigError, match="'eval.crf' must be bool"):
        load_config(None, ["eval.crf=3"])
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="'eval.crf' needs pydensecrf2"):
        load_config(None, ["eval.crf=true"])


def test_resume_accepts_a_checkpoint_older_than_the_eval_section(tmp_path):
    config = load_config(None, [])
    old = config.to_dict()
    del old["eval"]
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text(json.dumps({"config": old}))
    check_resumable(config, tmp_path)  # the defaults are what the old run did
    with pytest.raises(ConfigError, match="eval.crf"):
        check_resumable(config.replace(["eval.crf=true"]), tmp_path)


TINY = ["data.sites=2", "data.images_per_site=6", "data.eval_images=4", "data.image_size=32", "data.eval_size=32",
        "train.local_steps=3", "train.batch_size=4", "fed.rounds=1", "model.precision=\"fp32\"", "eval.crf=true",
        "eval.crf_iterations=5"]


@pytest.mark.parametrize("task", [["fed.strategy=fedavg"], ["task=supervised", "fed.strategy=local"]])
def test_run_reports_both_numbers(tmp_path, task):
    sets = [a for s in TINY + task + [f"cache_dir=\"{tmp_path / 'cache'}\""] for a in ("--set", s)]
    cli = subprocess.run([sys.executable, "-m", "fussfast", "run", "--out", str(tmp_path / "run"), *sets],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "with the dense CRF mIoU" in cli.stdout and "Dice" in cli.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    final = metrics["final"]
    for scores in [final["global"], *final["clients"].values()]:
        assert set(scores) == {"miou", "acc", "dice", "crf"} and set(scores["crf"]) == {"miou", "acc", "dice"}
        for s in (scores, scores["crf"]):
            assert 0 <= s["miou"] <= s["dice"] <= 100 and 0 <= s["acc"] <= 100
    assert final["global"]["crf"] != {k: final["global"][k] for k in ("miou", "acc", "dice")}  # the CRF moved pixels
    assert set(final["clients"]) == {"site0", "site1"}
    report = tmp_path / "report.html"
    assert subprocess.run([sys.executable, "-m", "fussfast", "report", str(tmp_path / "run"), "--out", str(report)],
                          capture_output=True, timeout=60).returncode == 0
    page = report.read_text()
    assert "global Dice" in page and "global mIoU (CRF)" in page and "site1 Dice (CRF)" in page
    assert f"{final['global']['crf']['miou']:.1f}" in page
