"""The tasks' fused local steps (channels-last head, fused sampling) against the reference
backend's NCHW steps: same random draws, same losses and gradients."""

import pytest
import torch

from fussfast.features import FeatureSet
from fussfast.losses import CorrespondenceConfig
from fussfast.model import SegmentationHead, SupervisedHead, knn_table
from fussfast.tasks import SiteModel, SupervisedModel

C, D, K = 24, 7, 5


def site(backend, dtype, side=(13, 11), n=12, **loss):
    g = torch.Generator().manual_seed(0)
    data = FeatureSet(torch.randn(n, C, *side, generator=g).half(),
                      torch.nn.functional.normalize(torch.randn(n, C, generator=g), dim=1),
                      torch.zeros(n, *side, dtype=torch.int64))
    torch.manual_seed(1)
    model = SiteModel(C, D, K, loss=CorrespondenceConfig.preset("cityscapes", **loss), backend=backend)
    model.head.to(dtype)
    model.probe.to(dtype)
    return model, data, knn_table(data.descriptors, 4)


def one_step(backend, dtype, **loss):
    """Loss of one step and the head's gradients before the update (a zero learning rate)."""
    model, data, table = site(backend, dtype, **loss)
    for opt in (model.head_opt, model.probe_opt):
        for group in opt.param_groups:
            group["lr"] = 0.0
    torch.manual_seed(2)
    losses = model.train_steps(data, table, 1, 6, torch.Generator().manual_seed(3))
    return losses[0], {k: p.grad.clone() for k, p in model.head.named_parameters()}


@pytest.mark.parametrize("samples", [11, 4])
def test_fused_step_matches_reference_float64(samples):
    loss, grads = one_step("fused", torch.float64, feature_samples=samples)
    ref_loss, ref_grads = one_step("reference", torch.float64, feature_samples=samples)
    # the reference samples the (float32) features in float32, the fused step in float64
    assert loss == pytest.approx(ref_loss, rel=1e-6, abs=1e-8)
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-5, atol=1e-7)


def test_fused_step_matches_reference_float32():
    loss, grads = one_step("fused", torch.float32)
    ref_loss, ref_grads = one_step("reference", torch.float32)
    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-3, atol=1e-5)


def test_fused_steps_train_like_the_reference():
    model, data, table = site("fused", torch.float32)
    ref, _, _ = site("reference", torch.float32)
    torch.manual_seed(2)
    losses = model.train_steps(data, table, 4, 6, torch.Generator().manual_seed(3))
    torch.manual_seed(2)
    ref_losses = ref.train_steps(data, table, 4, 6, torch.Generator().manual_seed(3))
    assert losses == pytest.approx(ref_losses, rel=1e-3, abs=1e-4)


def test_head_rows_is_forward():
    head = SegmentationHead(C, D).double().eval()
    x = torch.randn(3, C, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(head.rows(x.permute(0, 2, 3, 1)), head(x).permute(0, 2, 3, 1), rtol=1e-12, atol=1e-12)


def test_channel_mask_is_dropout2d():
    """The mask draws what Dropout2d draws on the full maps."""
    head = SegmentationHead(C, D).train()
    x = torch.randn(4, C, 5, 6)
    torch.manual_seed(7)
    want = head.dropout(x)
    torch.manual_seed(7)
    mask = head.channel_mask(4, "cpu")
    assert ((mask == 0) | (mask == torch.tensor(1 / 0.9))).all() and (mask == 0).any()
    torch.testing.assert_close(x * mask[:, :, None, None], want, rtol=0, atol=0)
    assert head.eval().channel_mask(4, "cpu") is None


def supervised_step(backend, objective="backce+contrast"):
    """One step's loss and gradients (zero learning rate) of a SupervisedModel in float64."""
    n, side, classes = 6, (7, 9), 5
    g = torch.Generator().manual_seed(0)
    data = FeatureSet(torch.randn(n, C, *side, generator=g).half(), torch.zeros(n, C),
                      torch.randint(0, classes, (n, 14, 18), generator=g))
    data.labelled = torch.zeros(n, classes, dtype=torch.bool)
    data.labelled[:, :2] = True
    torch.manual_seed(1)
    model = SupervisedModel(C, classes, embed_dim=16, objective=objective, backend=backend)
    model.head.double()
    for group in model.opt.param_groups:
        group["lr"] = 0.0
    torch.manual_seed(2)
    loss = model.train_steps(data, None, 1, 4, torch.Generator().manual_seed(3))[0]
    return loss, {k: p.grad.clone() for k, p in model.head.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("objective", ["ce", "backce+contrast"])
def test_fused_supervised_step_matches_reference_float64(objective):
    loss, grads = supervised_step("fused", objective)
    ref_loss, ref_grads = supervised_step("reference", objective)
    assert loss == pytest.approx(ref_loss, rel=1e-9)
    assert grads.keys() == ref_grads.keys() and ("proj.0.weight" in grads) == (objective != "ce")
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-7, atol=1e-10)


def test_head_trunk_and_embed_rows_are_forward():
    head = SupervisedHead(C, 5, 16).double().eval()
    x = torch.randn(3, C, 5, 6, dtype=torch.float64)
    logits, embed = head(x)
    rows_logits, h = head.trunk_rows(x.permute(0, 2, 3, 1))
    torch.testing.assert_close(rows_logits, logits.permute(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(head.embed_rows(h), embed.permute(0, 2, 3, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [lambda: SegmentationHead(C, D), lambda: SupervisedHead(C, 5, 16)],
                         ids=["unsupervised", "supervised"])
def test_bf16_head_products_match_float64(make):
    """compute_dtype bf16: outputs and parameter gradients in float32, within bf16 rounding of
    the float64 head; the channels-last rows agree with forward."""
    torch.manual_seed(0)
    head = make().eval()
    exact = make().eval().double()
    exact.load_state_dict(head.state_dict())
    head.compute_dtype = torch.bfloat16
    x = torch.randn(3, C, 5, 6)

    def outputs(h, feats):
        out = h(feats)
        return list(out) if isinstance(out, tuple) else [out]

    got, want = outputs(head, x), outputs(exact, x.double())
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, rtol=0, atol=0.03 * w.abs().max().item())
    sum(o.square().sum() for o in got).backward()
    sum(o.square().sum() for o in want).backward()
    for (name, p), q in zip(head.named_parameters(), exact.parameters()):
        assert p.grad.dtype == torch.float32, name
        # relative to the whole gradient: single entries of the trunk's gradient sum two paths that cancel
        assert (p.grad.double() - q.grad).norm() <= 0.05 * q.grad.norm(), name
    rows = x.permute(0, 2, 3, 1).to(head.input_dtype)
    with torch.no_grad():
        if isinstance(head, SegmentationHead):
            torch.testing.assert_close(head.rows(rows), got[0].detach().permute(0, 2, 3, 1), rtol=1e-2, atol=1e-2)
        else:
            logits, h = head.trunk_rows(rows)
            torch.testing.assert_close(logits, got[0].detach().permute(0, 2, 3, 1), rtol=1e-2, atol=1e-2)
            torch.testing.assert_close(head.embed_rows(h), got[1].detach().permute(0, 2, 3, 1), rtol=1e-2, atol=1e-2)


def test_bf16_head_fused_steps_train_like_float32():
    """A bf16 head's fused steps follow the float32 ones (same draws) within bf16 rounding."""
    model, data, table = site("fused", torch.float32)
    ref, _, _ = site("fused", torch.float32)
    model.head.compute_dtype = torch.bfloat16
    torch.manual_seed(2)
    losses = model.train_steps(data, table, 4, 6, torch.Generator().manual_seed(3))
    torch.manual_seed(2)
    ref_losses = ref.train_steps(data, table, 4, 6, torch.Generator().manual_seed(3))
    assert all(p.dtype == torch.float32 for p in model.head.parameters())
    assert losses == pytest.approx(ref_losses, rel=0.05, abs=0.01)
    assert losses != ref_losses  # the products did run in bf16


def test_head_precision_auto():
    from fussfast.model.backbone import native_bf16_cpu, resolve_head_precision
    assert resolve_head_precision("auto", "cuda") == "fp32"
    assert resolve_head_precision("auto", "cpu") == ("bf16" if native_bf16_cpu() else "fp32")
    assert resolve_head_precision("fp32", "cpu") == "fp32" and resolve_head_precision("bf16", "cuda") == "bf16"


def test_no_bf16_when_torch_is_held_to_avx2(monkeypatch):
    """A forced-AVX2 run (ATEN_CPU_CAPABILITY=avx2) times what an AVX2 machine runs: fp32, not
    emulated bf16, for the backbone and the head."""
    from fussfast.model.backbone import resolve_head_precision, resolve_precision
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_head_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "fp16"
