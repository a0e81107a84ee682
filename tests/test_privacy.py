"""Differentially private FedCC (fed/privacy.py): clipping, the noise's scale against dp-accounting's
numbers, the epsilon spent per round, the budget refusal, and runs with DP end to end."""

import json
import math
import subprocess
import sys

import pytest
import torch

dp_accounting = pytest.importorskip("dp_accounting")

from fussfast.config import ConfigError, load_config  # noqa: E402
from fussfast.fed.privacy import PLD_INTERVAL, CentroidPrivacy, clip_rows  # noqa: E402
from fussfast.fed.strategy import FedCC, Update, check_update, make_strategy  # noqa: E402
from fussfast.report import write_report  # noqa: E402
from fussfast.run import run  # noqa: E402

TINY = ["data.sites=3", "data.images_per_site=10", "data.eval_images=6", "data.image_size=32",
        "data.eval_size=32", "train.local_steps=4", "train.batch_size=4", "fed.rounds=2", "model.precision=\"fp32\""]


def tiny(tmp_path, *extra):
    return load_config(None, TINY + [f"cache_dir=\"{tmp_path.parent / 'shared-cache'}\"", *extra])


def epsilon_of(z, rounds, delta, accountant, interval=1e-4):
    """dp-accounting's epsilon of ``rounds`` Gaussian mechanisms of multiplier ``z``, written here apart
    (``interval``: PLD's discretization; 1e-4 is dp-accounting's default)."""
    acc = dp_accounting.rdp.RdpAccountant() if accountant == "rdp" else \
        dp_accounting.pld.PLDAccountant(value_discretization_interval=interval)
    acc.compose(dp_accounting.GaussianDpEvent(z), rounds)
    return acc.get_epsilon(delta)


def test_clip_rows_bounds_each_row_and_keeps_rows_inside():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 13, generator=g, dtype=torch.float64) * torch.rand(7, 1, generator=g, dtype=torch.float64) * 3
    clip = 1.7
    out = clip_rows(x, clip)
    for row, got in zip(x, out):
        norm = math.sqrt(sum(v * v for v in row.tolist()))
        want = row if norm <= clip else row * (clip / norm)
        assert torch.equal(got, want) if norm <= clip else torch.allclose(got, want, rtol=1e-12, atol=0)
    assert (out.norm(dim=1) <= clip * (1 + 1e-12)).all()
    assert (x.norm(dim=1) > clip).any() and (x.norm(dim=1) <= clip).any()  # both cases were exercised
    assert clip_rows(x.float(), clip).dtype == torch.float32


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_noise_multiplier_is_the_accountants_and_sigma_is_it_times_the_sensitivity(accountant):
    eps, delta, rounds, K, clip = 3.0, 1e-5, 5, 7, 0.6
    p = CentroidPrivacy(eps, delta, clip, rounds, accountant)
    if accountant == "rdp":  # the multiplier again, by bisection over dp-accounting's epsilon (PLD's is slow)
        low, high = 0.1, 100.0
        for _ in range(50):
            mid = (low + high) / 2
            low, high = (mid, high) if epsilon_of(mid, rounds, delta, accountant) > eps else (low, mid)
        assert p.multiplier == pytest.approx(high, rel=2e-3)
    assert epsilon_of(p.multiplier, rounds, delta, accountant) <= eps
    assert epsilon_of(p.multiplier * 0.99, rounds, delta, accountant) > eps  # not more noise than needed
    assert p.sigma(K) == pytest.approx(p.multiplier * 2 * clip * math.sqrt(K), rel=1e-12)


def test_noise_has_the_calibrated_std_and_is_reproducible():
    p = CentroidPrivacy(2.0, 1e-6, 0.3, 3, "rdp")
    K, D = 5, 4001
    x = torch.randn(K, D, dtype=torch.float64)  # rows far outside the clip
    out = p.privatize(x, torch.Generator().manual_seed(11))
    noise = out - clip_rows(x, 0.3)
    assert noise.std().item() == pytest.approx(p.sigma(K), rel=0.03)
    assert abs(noise.mean().item()) < 4 * p.sigma(K) / math.sqrt(K * D)
    assert torch.equal(out, p.privatize(x, torch.Generator().manual_seed(11)))
    assert not torch.equal(out, p.privatize(x, torch.Generator().manual_seed(12)))


def test_fedcc_uploads_noised_centroids_only_with_privacy():
    p = CentroidPrivacy(4.0, 1e-5, 1.0, 2, "rdp")
    private = make_strategy("fedcc-maximin", privacy=p)
    plain = make_strategy("fedcc-maximin")
    end = {"centroids": torch.randn(6, 9), "head.w": torch.randn(3)}
    state, carried = private.client_finish({}, end, end, steps=1, lr=1.0, generator=torch.Generator().manual_seed(5))
    assert list(carried) == ["centroids"] and state == {}
    assert torch.equal(carried["centroids"], p.privatize(end["centroids"], torch.Generator().manual_seed(5)))
    assert plain.client_finish({}, end, end, steps=1, lr=1.0) == ({}, {}) and plain.privacy is None
    # the noise is not a model move: the ratio screening leaves the noised centroids out
    current = {"centroids": torch.zeros(6, 9) + 0.01, "head.w": end["head.w"]}
    update = Update("s", {**end, "centroids": end["centroids"] + 1e3}, 5)
    assert "changes the model" in check_update(update, current, max_ratio=10.0)
    assert check_update(update, current, max_ratio=10.0, noised=private.noised) is None
    assert isinstance(private, FedCC) and private.noised == ("centroids",)


def test_epsilon_spent_grows_per_round_as_the_accountant_composes():
    p = CentroidPrivacy(6.0, 1e-5, 1.0, 4, "pld")
    spent = [p.record(r, 3)["epsilon"] for r in range(1, 5)]
    assert spent == sorted(spent) and len(set(spent)) == 4
    for r, e in enumerate(spent, 1):
        assert e == pytest.approx(epsilon_of(p.multiplier, r, 1e-5, "pld", PLD_INTERVAL), rel=1e-9)
        fine = epsilon_of(p.multiplier, r, 1e-5, "pld")  # the coarser discretization is a pessimistic bound
        assert fine <= e <= fine * (1 + 1e-3)
    assert spent[-1] <= 6.0 and spent[-1] == pytest.approx(6.0, rel=1e-3)  # the budget, used up at the last round
    with pytest.raises(ValueError, match=r"'fed.rounds' = 5: .* 4 rounds spend fed.dp_epsilon=6.0; 5 rounds"):
        p.check_rounds(5)


def test_config_refuses_nonsense(tmp_path):
    cases = {"'fed.dp_epsilon' noises FedCC.* needs fed.strategy fedcc": ["fed.strategy=\"fedavg\"",
                                                                         "fed.dp_epsilon=1.0"],
             "'fed.dp_delta' must be < 1": ["fed.strategy=\"fedcc-kmeans\"", "fed.dp_epsilon=1.0", "fed.dp_delta=1.0"],
             "keeps the centroids on the sites": ["fed.strategy=\"fedcc-kmeans\"", "fed.dp_epsilon=1.0",
                                                  "fed.local_params=[\"centroids\"]"],
             "'fed.dp_accountant' must be one of": ["fed.dp_accountant=\"moments\""],
             "'fed.dp_clip' must be > 0": ["fed.dp_clip=0.0"]}
    for message, overrides in cases.items():
        with pytest.raises(ConfigError, match=message):
            tiny(tmp_path, *overrides)
    assert tiny(tmp_path, "fed.strategy=\"fedavg\"").fed.dp_epsilon == 0  # off by default


@pytest.mark.parametrize("strategy", ["fedcc-kmeans", "fedcc-maximin"])
def test_cli_run_with_dp_records_the_epsilon_spent(tmp_path, strategy):
    out = tmp_path / "run"
    settings = TINY + [f"fed.strategy=\"{strategy}\"", "fed.dp_epsilon=4.0", "fed.dp_accountant=\"rdp\"",
                       "fed.dp_clip=0.5", f"cache_dir=\"{tmp_path.parent / 'shared-cache'}\""]
    cli = subprocess.run([sys.executable, "-m", "fussfast", "run", "--out", str(out)] +
                         [a for s in settings for a in ("--set", s)], capture_output=True, text=True, timeout=240)
    assert cli.returncode == 0, cli.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    p = CentroidPrivacy(4.0, 1e-5, 0.5, 2, "rdp")
    dp = [r["dp"] for r in metrics["rounds"]]
    assert [d["epsilon"] for d in dp] == pytest.approx([epsilon_of(p.multiplier, r, 1e-5, "rdp") for r in (1, 2)])
    assert dp[0]["epsilon"] < dp[1]["epsilon"] <= 4.0
    assert dp[0]["sigma"] == pytest.approx(p.multiplier * 2 * 0.5 * math.sqrt(6))  # data.num_classes = 6 centroids
    assert f"DP epsilon spent {dp[1]['epsilon']:.3g}" in cli.stderr
    page = write_report({strategy: out}, tmp_path / "report.html").read_text()
    assert "epsilon spent per round" in page and f"{dp[0]['epsilon']:.3g}" in page and "DP ε=4" in page


def test_resume_cannot_go_past_the_budget(tmp_path):
    config = tiny(tmp_path, "fed.strategy=\"fedcc-kmeans\"", "fed.dp_epsilon=2.0", "fed.dp_accountant=\"rdp\"",
                  "fed.rounds=1")
    run(config, tmp_path / "a")
    more = tiny(tmp_path, "fed.strategy=\"fedcc-kmeans\"", "fed.dp_epsilon=2.0", "fed.dp_accountant=\"rdp\"",
                "fed.rounds=3")
    with pytest.raises(ConfigError, match=r"--resume: config key 'fed.rounds' = 3: .* 1 rounds spend "
                                          r"fed.dp_epsilon=2.0; 3 rounds at that noise would spend epsilon=[0-9.]+$"):
        run(more, tmp_path / "a", resume=True)


def test_dp_accounting_is_imported_only_when_dp_is_on():
    code = ("import sys, fussfast.run, fussfast.config as c; c.load_config(None, ['fed.strategy=\"fedcc-kmeans\"']); "
            "assert 'dp_accounting' not in sys.modules, 'imported eagerly'")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
