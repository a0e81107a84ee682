"""The local mixture of experts (``MixtureAdapter``) against a plain float64 formula, its place in
both local models, and the two-phase round of ``Client.fit``."""

import numpy as np
import pytest
import torch

from fussfast.assemble import prepare
from fussfast.config import ConfigError, load_config
from fussfast.features import FeatureSet
from fussfast.losses import CorrespondenceConfig
from fussfast.model import knn_table
from fussfast.model.moe import MixtureAdapter, balance_loss
from fussfast.tasks import SiteModel, SupervisedModel

C, E, HIDDEN = 13, 3, 5


def trained(router, dtype=torch.float64, seed=0):
    """An adapter with every parameter random (an untrained one is the identity)."""
    torch.manual_seed(seed)
    moe = MixtureAdapter(C, E, HIDDEN, router).to(dtype)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return moe


def plain(moe, x):
    """``f + Σ_e g_e · expert_e(f)`` written out with numpy on channels-last ``x`` [B, H, W, C]."""
    f = x.detach().numpy().astype(np.float64)
    W = lambda m: m.weight.detach().numpy().astype(np.float64)  # noqa: E731
    b = lambda m: m.bias.detach().numpy().astype(np.float64)  # noqa: E731
    route = f.mean((1, 2), keepdims=True) if moe.router_kind == "image" else f
    z = route @ W(moe.router).T + b(moe.router)
    g = np.exp(z - z.max(-1, keepdims=True))
    g /= g.sum(-1, keepdims=True)
    out = f.copy()
    for e, expert in enumerate(moe.experts):
        h = np.maximum(f @ W(expert[0]).T + b(expert[0]), 0)
        out += g[..., e:e + 1] * (h @ W(expert[2]).T + b(expert[2]))
    return out


@pytest.mark.parametrize("router", ["pixel", "image"])
def test_value_and_gradients_match_the_formula(router):
    moe = trained(router)
    x = torch.randn(3, C, 7, 5, dtype=torch.float64, requires_grad=True)
    y = moe(x)
    np.testing.assert_allclose(y.permute(0, 2, 3, 1).detach().numpy(), plain(moe, x.permute(0, 2, 3, 1)),
                               rtol=1e-12, atol=1e-12)
    # gradients against the same formula written in torch ops (float64, independent of rows())
    weight = torch.randn_like(y)
    (y * weight).sum().backward()
    grads = {k: p.grad.clone() for k, p in moe.named_parameters()}
    x_grad = x.grad.clone()
    params = {k: p.detach().clone().requires_grad_(True) for k, p in moe.named_parameters()}
    x2 = x.detach().clone().requires_grad_(True)
    f = x2.permute(0, 2, 3, 1)
    route = f.mean((1, 2), keepdim=True) if router == "image" else f
    z = route @ params["router.weight"].T + params["router.bias"]
    g = z.exp() / z.exp().sum(-1, keepdim=True)
    out = f
    for e in range(E):
        h = (f @ params[f"experts.{e}.0.weight"].T + params[f"experts.{e}.0.bias"]).clamp(min=0)
        out = out + g[..., e:e + 1] * (h @ params[f"experts.{e}.2.weight"].T + params[f"experts.{e}.2.bias"])
    (out.permute(0, 3, 1, 2) * weight).sum().backward()
    for k in grads:
        torch.testing.assert_close(grads[k], params[k].grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x_grad, x2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("router", ["pixel", "image"])
def test_rows_is_forward_and_keeps_the_dtype(router):
    moe = trained(router)
    x = torch.randn(2, C, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(moe.rows(x.permute(0, 2, 3, 1)), moe(x).permute(0, 2, 3, 1), rtol=0, atol=0)
    half = moe.float().rows(x.permute(0, 2, 3, 1).bfloat16())
    assert half.dtype == torch.bfloat16


@pytest.mark.parametrize("router", ["pixel", "image"])
def test_untrained_adapter_is_the_identity(router):
    moe = MixtureAdapter(C, E, HIDDEN, router)
    x = torch.randn(2, C, 5, 7)
    assert torch.equal(moe(x), x)
    assert torch.equal(moe.rows(x.permute(0, 2, 3, 1).bfloat16()), x.permute(0, 2, 3, 1).bfloat16())


def test_image_routing_uses_each_image_mean():
    moe = trained("image")
    x = torch.randn(4, 5, 3, C, dtype=torch.float64)
    g = moe.gates(x)
    assert g.shape == (4, 1, 1, E)
    for b in range(4):  # the image's mean feature, routed; independent of the other images
        want = torch.softmax(moe.router(x[b].mean((0, 1))), -1)
        torch.testing.assert_close(g[b, 0, 0], want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(moe.rows(x[b:b + 1]), moe.rows(x)[b:b + 1], rtol=1e-12, atol=1e-12)
    pixel = trained("pixel")
    assert pixel.gates(x).shape == (4, 5, 3, E)
    assert not torch.allclose(pixel.gates(x)[:, 0, 0], pixel.gates(x)[:, 1, 1])


def test_balance_loss_on_hand_made_gates():
    uniform = torch.full((7, 4), 0.25)
    assert float(balance_loss(uniform)) == 0.0  # its minimum
    collapsed = torch.zeros(5, 4)
    collapsed[:, 2] = 1
    assert float(balance_loss(collapsed)) == pytest.approx(3.0)  # E - 1
    gates = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3]], dtype=torch.float64)
    m = np.array([0.5, 0.3, 0.2])
    assert float(balance_loss(gates)) == pytest.approx(((m - m.mean()) ** 2).mean() / m.mean() ** 2)
    # over rows of any leading shape, the per-image gates [B, 1, 1, E] count once per image
    assert float(balance_loss(gates.view(2, 1, 1, 3))) == pytest.approx(float(balance_loss(gates)))


def site(backend, moe, side=(9, 7), n=10):
    g = torch.Generator().manual_seed(0)
    data = FeatureSet(torch.randn(n, C, *side, generator=g).half(),
                      torch.nn.functional.normalize(torch.randn(n, C, generator=g), dim=1),
                      torch.zeros(n, *side, dtype=torch.int64))
    torch.manual_seed(1)
    model = SiteModel(C, 6, 4, loss=CorrespondenceConfig.preset("cityscapes", feature_samples=5), backend=backend,
                      moe_experts=E if moe else 0, moe_hidden=HIDDEN, moe_router=moe or "pixel", moe_balance=0.5)
    model.head.double()
    model.probe.double()
    if moe:
        model.moe = trained(moe)
        model.moe_opt = torch.optim.Adam(model.moe.parameters(), lr=0.0)
    for opt in (model.head_opt, model.probe_opt):
        for group in opt.param_groups:
            group["lr"] = 0.0
    return model, data, knn_table(data.descriptors, 4)


@pytest.mark.parametrize("router", ["pixel", "image"])
def test_fused_step_with_moe_matches_reference(router):
    """Channels-last training (MoE on whole images, the head on the positives' read pixels) is the
    NCHW step: same loss (balance term included) and gradients of the head and of the MoE."""
    out = {}
    for backend in ("fused", "reference"):
        model, data, table = site(backend, router)
        torch.manual_seed(2)
        loss = model.train_steps(data, table, 1, 4, torch.Generator().manual_seed(3))[0]
        grads = {k: p.grad.clone() for k, p in model.trained_parameters().items() if p.grad is not None}
        out[backend] = loss, grads
    (loss, grads), (ref_loss, ref_grads) = out["fused"], out["reference"]
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert grads.keys() == ref_grads.keys() and any(k.startswith("moe.") for k in grads)
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-5, atol=1e-7)


def test_moe_reads_the_head_input_and_not_the_loss_features():
    """The head reads moe(features); predictions change with the MoE, the frozen features don't."""
    model, data, _ = site("fused", "pixel")
    feats = data.features[:2].double()
    torch.testing.assert_close(model.head_input(feats), model.moe(feats), rtol=0, atol=0)
    with model.phase(lambda k: True, adapting=False):
        assert model.head_input(feats) is feats
    plain_model, _, _ = site("fused", None)
    assert plain_model.head_input(feats) is feats
    assert "moe.router.weight" in model.arrays() and not any(k.startswith("moe") for k in plain_model.arrays())


def test_supervised_model_arrays_and_optimizer_carry_the_moe():
    torch.manual_seed(0)
    model = SupervisedModel(C, 4, embed_dim=6, objective="ce", moe_experts=E, moe_hidden=HIDDEN)
    arrays = model.arrays()
    assert {k for k in arrays if k.startswith("moe.")} == {f"moe.{k}" for k in model.moe.state_dict()}
    n = 5
    data = FeatureSet(torch.randn(n, C, 5, 5), torch.zeros(n, C), torch.randint(0, 4, (n, 10, 10)))
    model.train_steps(data, None, 2, 3, torch.Generator().manual_seed(0))
    assert model.optimizer_states()["moe"]["state"]  # Adam moments of the MoE
    other = SupervisedModel(C, 4, embed_dim=6, objective="ce", moe_experts=E, moe_hidden=HIDDEN)
    other.load_arrays(model.arrays())
    other.load_optimizer_states(model.optimizer_states())
    assert all(torch.equal(v, model.arrays()[k]) for k, v in other.arrays().items())
    plain = SupervisedModel(C, 4, embed_dim=6, objective="ce")
    with pytest.raises(KeyError, match="no MoE"):
        plain.load_arrays({"moe.router.weight": arrays["moe.router.weight"]})


TINY = ["data.sites=2", "data.images_per_site=6", "data.eval_images=4", "data.image_size=16", "data.eval_size=16",
        "train.local_steps=3", "train.batch_size=3", "model.precision=\"fp32\"", "fed.strategy=\"fedavg\"",
        "model.moe_experts=3", "model.moe_hidden=8", "fed.distill_weight=1.0"]


@pytest.mark.parametrize("task", ["unsupervised", "supervised"])
def test_two_phase_fit(tmp_path_factory, task):
    """Phase 1 leaves the MoE untouched and is the update; phase 2 leaves every shared array
    untouched; the MoE never travels."""
    cache = tmp_path_factory.getbasetemp() / "moe-cache"
    config = load_config(None, TINY + [f"cache_dir=\"{cache}\"", "fed.personal_steps=2",
                                       *(["task=\"supervised\"", "loss.objective=\"backce\""]
                                         if task == "supervised" else [])])
    setup = prepare(config)
    client = setup.clients()["site0"]
    strategy = setup.strategy(client.model.arrays())
    assert strategy.local_params == ("moe",)
    with torch.no_grad():  # a MoE that is not the identity, so that bypassing it matters
        for p in client.model.moe.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    start = client.model.arrays()
    phases = []
    real = client.model.train_steps

    def recorded(*args, **kwargs):
        phases.append(client.model.arrays())
        out = real(*args, **kwargs)
        phases.append(client.model.arrays())
        return out

    client.model.train_steps = recorded
    update = client.fit(strategy.shared(start), strategy, torch.Generator().manual_seed(0))
    before1, after1, before2, after2 = phases
    moe = [k for k in start if k.startswith("moe.")]
    shared = [k for k in start if not k.startswith("moe.")]
    assert moe and shared and update.arrays.keys() == set(shared)
    assert all(torch.equal(after1[k], start[k]) for k in moe)  # phase 1: the MoE untouched
    assert any(not torch.equal(after1[k], start[k]) for k in shared)
    assert all(torch.equal(after2[k], after1[k]) for k in shared)  # phase 2: shared untouched
    assert any(not torch.equal(after2[k], after1[k]) for k in moe)
    assert all(torch.equal(update.arrays[k], after1[k]) for k in shared)  # the update is phase 1's model
    assert client.model.adapting and all(p.requires_grad for p in client.model.trained_parameters().values())


def test_phase_one_is_the_plain_global_training(tmp_path_factory):
    """Phase 1 bypasses the MoE and does not distil: its update is bit for bit that of a plain
    FedAvg fit without a MoE (same seeds, same draws)."""
    cache = tmp_path_factory.getbasetemp() / "moe-cache"
    updates = []
    for extra in (["fed.personal_steps=2"], ["model.moe_experts=0", "fed.distill_weight=0.0"]):
        setup = prepare(load_config(None, TINY + [f"cache_dir=\"{cache}\"", *extra]))
        client = setup.clients()["site1"]
        strategy = setup.strategy(client.model.arrays())
        with torch.no_grad():
            for p in (client.model.moe.parameters() if client.model.moe is not None else []):
                p.add_(torch.randn_like(p) * 0.1)
        torch.manual_seed(5)
        updates.append(client.fit(strategy.shared(client.model.arrays()), strategy, torch.Generator().manual_seed(0)))
    assert updates[0].arrays.keys() == updates[1].arrays.keys()
    assert all(torch.equal(updates[0].arrays[k], updates[1].arrays[k]) for k in updates[0].arrays)
    assert updates[0].metrics == updates[1].metrics


def test_personal_steps_config_errors():
    with pytest.raises(ConfigError, match="'fed.personal_steps' needs something local"):
        load_config(None, ["fed.strategy=\"fedavg\"", "fed.personal_steps=2"])
    with pytest.raises(ConfigError, match="'fed.personal_steps' applies to federated strategies"):
        load_config(None, ["fed.strategy=\"local\"", "fed.personal_steps=2", "model.moe_experts=2"])
    with pytest.raises(ConfigError, match="'model.moe_router' must be one of"):
        load_config(None, ["model.moe_router=\"token\""])
