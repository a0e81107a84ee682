"""LoRA on the frozen backbone inside a run: what is cached, what trains, what travels, resume."""

import json

import pytest
import torch

from fussfast.assemble import prepare
from fussfast.config import ConfigError, load_config
from fussfast.fed.strategy import make_strategy
from fussfast.run import run

TINY = ["data.sites=2", "data.images_per_site=8", "data.eval_images=4", "data.image_size=32",
        "data.eval_size=32", "train.local_steps=3", "train.batch_size=4", "fed.rounds=2", "model.precision=\"fp32\"",
        "model.backbone=\"vit_small_patch16_224.dino\"", "model.lora_rank=2", "model.lora_blocks=2"]


def tiny(tmp_path, *extra):
    return load_config(None, TINY + [f"cache_dir=\"{tmp_path.parent / 'lora-cache'}\"", *extra])


@pytest.mark.parametrize("task", ["unsupervised", "supervised"])
def test_cache_holds_the_stem_and_the_untrained_adapter_changes_nothing(tmp_path, task):
    """The cached inputs are the tokens before the first adapted block; with B = 0 the encoded
    features are the frozen backbone's, so predictions equal those of the same head on features
    extracted without LoRA."""
    setup = prepare(tiny(tmp_path, f"task=\"{task}\""))
    plain = prepare(tiny(tmp_path, f"task=\"{task}\"", "model.lora_rank=0"))
    backbone = setup.backbone()
    assert setup.lora_blocks == (backbone.num_blocks - 2, backbone.num_blocks - 1)
    tokens, features = setup.shared.features, plain.shared.features
    assert tokens.dim() == 3 and tokens.shape[2] == backbone.dim  # [N, prefix + patches, C]
    assert setup.feature_dim == plain.feature_dim == backbone.dim
    model, reference = setup.new_model(), plain.new_model()
    reference.load_arrays({k: v for k, v in model.arrays().items() if not k.startswith("lora.")})
    torch.testing.assert_close(model.encode(tokens), features.float(), atol=2e-3, rtol=2e-3)  # cache: fp16
    masks = setup.shared.masks
    same = model.predict(tokens, setup.shared.flipped, masks.shape[-2:]) == \
        reference.predict(features, plain.shared.flipped, masks.shape[-2:])
    assert same.float().mean() > 0.99  # the cache's fp16 rounding may flip a near tie


@pytest.mark.parametrize("task", ["unsupervised", "supervised"])
def test_training_moves_the_adapter_not_the_backbone(tmp_path, task):
    setup = prepare(tiny(tmp_path, f"task=\"{task}\"", "fed.strategy=\"fedavg\""))
    backbone = setup.backbone()
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    client = setup.clients()["site0"]
    before = client.model.arrays()
    lora = sorted(k for k in before if k.startswith("lora."))
    assert lora and all(k.endswith((".A", ".B")) for k in lora)
    assert all(not before[k].any() for k in lora if k.endswith(".B"))  # B starts at 0
    strategy = make_strategy("fedprox", mu=0.1)  # its term covers the LoRA factors too
    update = client.fit(setup.new_model().arrays(), strategy, torch.Generator().manual_seed(0))
    assert set(lora) <= set(update.arrays)  # LoRA travels by default
    assert all(update.arrays[k].any() for k in lora if k.endswith(".B"))
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in frozen.items())
    assert not any(p.requires_grad for p in backbone.parameters())


def test_run_counts_the_adapter_bytes(tmp_path):
    """LoRA's factors travel with what is shared (resume: tests/test_federation.py)."""
    config = tiny(tmp_path, "fed.strategy=\"fedavg\"", "fed.rounds=1", "fed.local_params=[\"head.mlp\"]")
    metrics = run(config, tmp_path / "run")
    model = prepare(config).new_model()
    shared = {k: v for k, v in model.arrays().items() if not k.startswith("head.mlp.")}
    assert any(k.startswith("lora.") for k in shared)
    size = sum(v.numel() * v.element_size() for v in shared.values())
    assert metrics["rounds"][0]["bytes"]["site0"] == {"down": size, "up": size}


def test_cli_run_supervised_with_lora(tmp_path):
    metrics = run(tiny(tmp_path, "task=\"supervised\"", "fed.strategy=\"fedavg\"", "fed.rounds=1"), tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["final"]["global"]["miou"] == metrics["final"]["global"]["miou"] > 0
    assert saved["config"]["model"]["lora_rank"] == 2


def test_lora_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.lora_targets"):
        tiny(tmp_path, "model.lora_targets=[\"fc1\"]")
    with pytest.raises(ConfigError, match="model.lora_blocks"):
        prepare(tiny(tmp_path, "model.lora_blocks=13"))


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_the_loss_correlates_the_frozen_features_not_the_adapted_ones(tmp_path, monkeypatch, backend):
    """STEGO's teacher signal stays the frozen backbone's: with LoRA's B non-zero the head reads
    adapted features, while the correspondence loss gets the plain backbone's features of the
    same images (a target LoRA could move would collapse features and codes together)."""
    from fussfast.losses import CorrespondenceLoss

    setup = prepare(tiny(tmp_path, "fed.strategy=\"fedavg\"", f"train.backend=\"{backend}\""))
    model = setup.new_model()
    with torch.no_grad():
        for p in model.encoder.lora.parameters():
            p.normal_(0, 0.5)
    seen = []
    for name in ("stacked", "__call__"):
        real = getattr(CorrespondenceLoss, name)

        def spy(self, feats, *args, real=real, **kwargs):
            seen.append(feats.detach().clone())
            return real(self, feats, *args, **kwargs)
        monkeypatch.setattr(CorrespondenceLoss, name, spy)
    data = setup.train["site0"].get()
    model.train_steps(data, torch.arange(len(data))[:, None].roll(1, 0), 1, 3, torch.Generator().manual_seed(0))
    feats = seen[0] if seen[0].shape[-1] == setup.feature_dim else seen[0].permute(0, 2, 3, 1)  # channels-last
    frozen = model.frozen_features(data.features).permute(0, 2, 3, 1)
    adapted = model.encode(data.features).detach().permute(0, 2, 3, 1)
    assert not torch.allclose(frozen, adapted, atol=1e-2)  # the adapter does change the features
    rows = lambda t: t.reshape(-1, t.shape[-1]).float()  # noqa: E731
    to_frozen = torch.cdist(rows(feats), rows(frozen)).min(1).values  # each row's nearest frozen pixel
    to_adapted = torch.cdist(rows(feats), rows(adapted)).min(1).values
    scale = rows(frozen).norm(dim=1).mean()
    assert to_frozen.max() < 0.02 * scale < to_adapted.min(), (to_frozen.max(), to_adapted.min(), scale)
