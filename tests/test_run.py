"""`fussfast run` end to end on the built-in synthetic data, and config checking."""

import json
import subprocess
import sys

import pytest

from fussfast.config import ConfigError, load_config
from fussfast.model import resolve_head_precision
from fussfast.run import run

SMALL = ["data.sites=2", "data.images_per_site=16", "data.eval_images=12", "data.image_size=48",
         "data.eval_size=48", "train.local_steps=25", "fed.rounds=2", "model.precision=\"fp32\""]


@pytest.fixture(scope="module")
def centralized(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = load_config(None, SMALL + [f"cache_dir=\"{out / 'cache'}\""])
    return run(config, out), out, config


def test_centralized_beats_majority_and_writes_metrics(centralized):
    metrics, out, _ = centralized
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["final"] == metrics["final"]
    assert [r["round"] for r in saved["rounds"]] == [1, 2]
    assert set(saved["final"]["clients"]) == {"site0", "site1"}
    for key in ("miou", "acc"):
        assert 0 <= saved["final"]["global"][key] <= 100
    # measured on this setup (CPU, fp32): seed 0 gives 37.5 mIoU against 4.7 for the majority
    # class (seeds 1 and 2: 42.3 / 5.2 and 13.6 / 3.6); a margin of 15 fails a model that learned
    # nothing while leaving room for float differences across machines
    assert saved["final"]["global"]["miou"] > saved["baseline"]["majority"]["miou"] + 15
    assert saved["versions"]["fussfast"] and saved["config"]["fed"]["strategy"] == "centralized"
    assert saved["precision"] == "fp32"  # the backbone's precision, as resolved
    assert saved["head_precision"] == resolve_head_precision("auto", "cpu")


def test_loss_decreases(centralized):
    metrics, _, _ = centralized
    losses = [r["loss"]["all"] for r in metrics["rounds"]]
    assert losses[-1] < losses[0]


def test_same_seed_same_metrics(centralized, tmp_path):
    metrics, out, config = centralized
    again = run(config, tmp_path)  # features come from the same cache
    assert again["rounds"][-1]["global"] == metrics["rounds"][-1]["global"]
    assert again["rounds"][-1]["loss"] == metrics["rounds"][-1]["loss"]


def test_local_strategy(tmp_path):
    config = load_config(None, SMALL + ["fed.strategy=local", "fed.rounds=1", f"cache_dir=\"{tmp_path / 'c'}\""])
    metrics = run(config, tmp_path)
    assert set(metrics["rounds"][0]["loss"]) == {"site0", "site1"}
    assert metrics["final"]["global"]["miou"] > 0


def test_folder_data(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for base, n in (("clients/a", 4), ("clients/b", 4), ("val", 3)):
        (tmp_path / "data" / base / "images").mkdir(parents=True)
        (tmp_path / "data" / base / "masks").mkdir(parents=True)
        for j in range(n):
            mask = (np.arange(40)[None, :] >= 20).astype(np.uint8).repeat(40, 0)  # left 0, right 1
            img = np.where(mask[..., None] == 1, [200, 30, 30], [30, 30, 200]).astype(np.uint8)
            img = np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "data" / base / "images" / f"{j}.png")
            Image.fromarray(mask).save(tmp_path / "data" / base / "masks" / f"{j}.png")
    config = load_config(None, ["data.kind=\"folder\"", f"data.root=\"{tmp_path / 'data'}\"", "data.num_classes=2",
                                "data.image_size=32", "data.eval_size=32", "train.local_steps=5", "fed.rounds=1",
                                "model.precision=\"fp32\"", f"cache_dir=\"{tmp_path / 'c'}\""])
    metrics = run(config, tmp_path / "out")
    assert set(metrics["final"]["clients"]) == {"a", "b"}
    assert 0 <= metrics["final"]["global"]["miou"] <= 100

    # the feature cache follows the images' contents, not their names
    from fussfast.assemble import prepare

    before = prepare(config).train["a"].get().features.clone()
    shards = set((tmp_path / "c").iterdir())
    assert prepare(config).train["a"].get().features.equal(before) and set((tmp_path / "c").iterdir()) == shards
    image = tmp_path / "data" / "clients" / "a" / "images" / "0.png"
    Image.fromarray(255 - np.asarray(Image.open(image))).save(image)  # same name, same size
    after = prepare(config).train["a"].get().features
    assert not after[0].equal(before[0]) and after[1:].equal(before[1:])


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    cases = [
        ('[data]\nkindd = "synthetic"\n', "unknown config key 'data.kindd'"),
        ('[train]\nlocal_steps = "ten"\n', "'train.local_steps' must be int"),
        ('[fed]\nstrategy = "fedsgd"\n', "'fed.strategy' must be one of"),
        ('[model]\nweights = "/nope/vit.pth"\n', "'model.weights': no file at /nope/vit.pth"),
        ('seed = [1\n', "not valid TOML"),
        ('[data]\nkind = "cityscapes"\nroot = "/nope"\n', "'data.root': no dataset directory at /nope"),
    ]
    for text, message in cases:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
            load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_config(None, ["fed.rounds"])
    assert load_config(None, ["fed.rounds=5", "train.head_lr=1"]).train.head_lr == 1.0


def test_cli_reports_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[fed]\nrounds = 0\n")
    out = subprocess.run([sys.executable, "-m", "fussfast", "run", str(bad)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert "fussfast run: config key 'fed.rounds' must be >= 1" in out.stderr
    assert "Traceback" not in out.stderr
    (tmp_path / "empty").mkdir()
    bad.write_text(f'[data]\nkind = "folder"\nroot = "{tmp_path / "empty"}"\n')
    out = subprocess.run([sys.executable, "-m", "fussfast", "run", str(bad), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "folder data: no directory" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedcc-kmeans", "fedcc-maximin"])
def test_federated_strategies_run(tmp_path, strategy):
    config = load_config(None, SMALL + [f"fed.strategy=\"{strategy}\"", "fed.rounds=1", "train.local_steps=10",
                                        f"cache_dir=\"{tmp_path / 'c'}\""])
    metrics = run(config, tmp_path)
    round1 = metrics["rounds"][0]
    assert round1["excluded"] == {} and set(round1["clients"]) == {"site0", "site1"}
    assert round1["bytes"]["site0"]["up"] == round1["bytes"]["site0"]["down"] > 0
    assert metrics["final"]["global"]["miou"] > metrics["baseline"]["majority"]["miou"]


def test_nan_update_is_left_out(tmp_path, monkeypatch):
    import fussfast.fed.client as client_module

    real = client_module.Update

    def poisoned(name, arrays, num_samples, metrics):
        if name == "site0":
            arrays = {**arrays, "centroids": arrays["centroids"] * float("nan")}
        return real(name, arrays, num_samples, metrics)

    monkeypatch.setattr(client_module, "Update", poisoned)
    config = load_config(None, SMALL + ["fed.strategy=\"fedcc-kmeans\"", "fed.rounds=1", "train.local_steps=5",
                                        f"cache_dir=\"{tmp_path / 'c'}\""])
    metrics = run(config, tmp_path)
    assert metrics["rounds"][0]["excluded"] == {"site0": "site0: centroids contains NaN or Inf"}
    assert metrics["rounds"][0]["bytes"]["site0"]["up"] == 0
    assert metrics["final"]["global"]["miou"] >= 0  # the run went on with site1 alone


def test_failing_client_is_left_out_and_min_clients_ends_the_run(tmp_path, monkeypatch):
    from fussfast.tasks import SiteModel

    real = SiteModel.train_steps

    def flaky(self, data, *args, **kwargs):
        if data.features.shape[0] == 16 and getattr(self, "fail", False):
            raise MemoryError("out of memory")
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(SiteModel, "train_steps", flaky)
    from fussfast.assemble import Setup

    real_site_model = Setup.site_model

    def site_model(self, name):
        model = real_site_model(self, name)
        model.fail = name == "site0"  # site0's model fails every round
        return model

    monkeypatch.setattr(Setup, "site_model", site_model)
    base = SMALL + ["fed.strategy=\"fedavg\"", "fed.rounds=1", "train.local_steps=5", f"cache_dir=\"{tmp_path / 'c'}\""]
    metrics = run(load_config(None, base), tmp_path)
    assert metrics["rounds"][0]["excluded"] == {"site0": "site0: failed with MemoryError: out of memory"}
    with pytest.raises(RuntimeError, match="fewer than fed.min_clients=2"):
        run(load_config(None, base + ["fed.min_clients=2"]), tmp_path / "two")
