"""FedDyn and SCAFFOLD: two rounds of a quadratic federation solved by hand (3 clients, 2 sampled
per round), the client terms and updates against their formulas, screening of the control arrays,
and the CLI in both tasks."""

import json
from fractions import Fraction as F

import pytest
import torch
from safetensors.torch import load_file

from fussfast.__main__ import main
from fussfast.fed import FedAvg, Server, Update, check_update, make_strategy
from fussfast.fed.strategy import CONTROL, SERVER_ONLY

W = "head.w"
TARGETS = {"a": [2.0, 0.0], "b": [0.0, 4.0], "c": [-2.0, 2.0]}  # L_k(θ) = ½ ||θ − a_k||²


def loss(theta, k):
    return 0.5 * ((theta - torch.tensor(TARGETS[k], dtype=torch.float64)) ** 2).sum()


def exact(values):
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def feddyn_round(strategy, server, states, sampled):
    """Each sampled client's exact local minimizer of L_k − <g_k, θ> + α/2 ||θ − θ0||²:
    θ = (a_k + g_k + α θ0) / (1 + α); the gradient of loss + client_penalty must vanish there."""
    received = server.shared()
    theta0, alpha = received[W], strategy.alpha
    replies = {}
    for k in sampled:
        g = states[k].get(W, torch.zeros(2, dtype=torch.float64))
        theta = ((torch.tensor(TARGETS[k], dtype=torch.float64) + g + alpha * theta0) / (1 + alpha)).requires_grad_()
        total = loss(theta, k) + strategy.client_penalty({W: theta}, {W: theta0}, states[k])
        (grad,) = torch.autograd.grad(total, theta)
        torch.testing.assert_close(grad, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
        states[k], control = strategy.client_finish(states[k], received, {W: theta.detach()}, steps=1, lr=1.0)
        replies[k] = Update(k, {W: theta.detach(), **control}, 1)
    return server.round(0, replies, sites=list(TARGETS))


def test_feddyn_two_rounds_by_hand():
    strategy = make_strategy("feddyn", alpha=1.0, weighted=False, num_clients=3)
    server = Server(strategy, {W: torch.zeros(2, dtype=torch.float64)})
    assert set(server.current) == {W, SERVER_ONLY + W} and set(server.shared()) == {W}  # h stays on the server
    states = {k: {} for k in TARGETS}

    # round 1, P = {a, b}: θ_a = (2, 0)/2, θ_b = (0, 4)/2; g_a = −(1, 0), g_b = −(0, 2);
    # h = −1/3 ((1, 0) + (0, 2)); θ¹ = mean − h = (1/2, 1) + (1/3, 2/3)
    record = feddyn_round(strategy, server, states, ["a", "b"])
    torch.testing.assert_close(states["a"][W], exact([-1, 0]))
    torch.testing.assert_close(states["b"][W], exact([0, -2]))
    torch.testing.assert_close(server.current[SERVER_ONLY + W], exact([F(-1, 3), F(-2, 3)]))
    torch.testing.assert_close(server.current[W], exact([F(5, 6), F(5, 3)]))
    assert record["bytes"] == {"a": {"down": 16, "up": 16}, "b": {"down": 16, "up": 16}, "c": {"down": 0, "up": 0}}

    # round 2, P = {b, c}, θ0 = (5/6, 5/3): θ_b = ((0, 4) + (0, −2) + θ0)/2 = (5/12, 11/6),
    # θ_c = ((−2, 2) + θ0)/2 = (−7/12, 11/6); g_b = (0, −2) − (θ_b − θ0) = (5/12, −13/6),
    # g_c = −(θ_c − θ0) = (17/12, −1/6); h = h − 1/3 ((−5/12, 1/6) + (−17/12, 1/6)) = (5/18, −7/9);
    # θ² = (−1/12, 11/6) − h = (−13/36, 47/18)
    feddyn_round(strategy, server, states, ["b", "c"])
    torch.testing.assert_close(states["b"][W], exact([F(5, 12), F(-13, 6)]))
    torch.testing.assert_close(states["c"][W], exact([F(17, 12), F(-1, 6)]))
    torch.testing.assert_close(server.current[SERVER_ONLY + W], exact([F(5, 18), F(-7, 9)]))
    torch.testing.assert_close(server.current[W], exact([F(-13, 36), F(47, 18)]))
    # h is the mean of every client's g_k (the sampled ones' and the others')
    torch.testing.assert_close(server.current[SERVER_ONLY + W], sum(s[W] for s in states.values()) / 3)


def scaffold_round(strategy, server, states, sampled, steps=2, lr=0.5):
    """``steps`` SGD steps on L_k, each corrected by ``client_step``: y ← y − η ((y − a_k) + c − c_i)."""
    received = server.shared()
    replies = {}
    for k in sampled:
        y = received[W].clone()
        for _ in range(steps):
            y.requires_grad_()
            total = loss(y, k) + strategy.client_penalty({W: y}, received, states[k])  # none for SCAFFOLD
            (grad,) = torch.autograd.grad(total, y)
            y = (y - lr * grad).detach()
            strategy.client_step({W: y}, received, states[k], lr=lr)
        states[k], control = strategy.client_finish(states[k], received, {W: y}, steps=steps, lr=lr)
        replies[k] = Update(k, {W: y, **control}, 1)
    return server.round(0, replies, sites=list(TARGETS))


def test_scaffold_two_rounds_by_hand():
    strategy = make_strategy("scaffold", weighted=False, num_clients=3)
    server = Server(strategy, {W: torch.zeros(2, dtype=torch.float64)})
    assert set(server.shared()) == {W, CONTROL + W}  # c travels with the model
    states = {k: {} for k in TARGETS}

    # round 1, S = {a, b}, K = 2, η = 1/2, c = c_i = 0: y_a: (1, 0), (3/2, 0); y_b: (0, 2), (0, 3);
    # c_i⁺ = (x − y_i)/(Kη): c_a = (−3/2, 0), c_b = (0, −3); x = mean y = (3/4, 3/2);
    # c = 0 + 1/3 ((−3/2, 0) + (0, −3)) = (−1/2, −1)
    record = scaffold_round(strategy, server, states, ["a", "b"])
    torch.testing.assert_close(states["a"][W], exact([F(-3, 2), 0]))
    torch.testing.assert_close(states["b"][W], exact([0, -3]))
    torch.testing.assert_close(server.current[W], exact([F(3, 4), F(3, 2)]))
    torch.testing.assert_close(server.current[CONTROL + W], exact([F(-1, 2), -1]))
    # x and c go down, y and Δc come up: 2 × 2 float64 each way
    assert record["bytes"] == {"a": {"down": 32, "up": 32}, "b": {"down": 32, "up": 32}, "c": {"down": 0, "up": 0}}

    # round 2, S = {b, c}: b's correction c − c_b = (−1/2, 2): y_b = (5/8, 7/4), (9/16, 15/8),
    # c_b⁺ = c_b − c + (x − y_b) = (11/16, −19/8); c's correction c = (−1/2, −1):
    # y_c = (−3/8, 9/4), (−15/16, 21/8), c_c⁺ = −c + (x − y_c) = (35/16, −1/8);
    # x = (3/4, 3/2) + mean((−3/16, 3/8), (−27/16, 9/8)) = (−3/16, 9/4);
    # c = (−1/2, −1) + 1/3 ((11/16, 5/8) + (35/16, −1/8)) = (11/24, −5/6)
    scaffold_round(strategy, server, states, ["b", "c"])
    torch.testing.assert_close(states["b"][W], exact([F(11, 16), F(-19, 8)]))
    torch.testing.assert_close(states["c"][W], exact([F(35, 16), F(-1, 8)]))
    torch.testing.assert_close(server.current[W], exact([F(-3, 16), F(9, 4)]))
    torch.testing.assert_close(server.current[CONTROL + W], exact([F(11, 24), F(-5, 6)]))
    # c is the mean of every client's c_i
    torch.testing.assert_close(server.current[CONTROL + W], sum(s[W] for s in states.values()) / 3)


def test_scaffold_server_lr_and_weights():
    """x ← x + η_g Σ w_k (y_k − x) with sample-count weights; c's sum stays uniform over N."""
    strategy = make_strategy("scaffold", server_lr=2.0, num_clients=5)
    current = strategy.with_state({W: torch.tensor([1.0, -1.0], dtype=torch.float64)})
    ups = [Update("a", {W: torch.tensor([2.0, 0.0], dtype=torch.float64),
                        CONTROL + W: torch.tensor([1.0, 2.0], dtype=torch.float64)}, 1),
           Update("b", {W: torch.tensor([5.0, 3.0], dtype=torch.float64),
                        CONTROL + W: torch.tensor([4.0, -2.0], dtype=torch.float64)}, 3)]
    out = strategy.aggregate(1, ups, current)
    # Δy: (1, 1) and (4, 4), weights 1/4, 3/4: mean (13/4, 13/4); x = (1, −1) + 2 · 13/4
    torch.testing.assert_close(out[W], exact([F(15, 2), F(11, 2)]))
    torch.testing.assert_close(out[CONTROL + W], exact([1, 0]))  # (5, 0) / 5
    with pytest.raises(ValueError, match="3 updates from a federation of 2 clients"):
        make_strategy("scaffold", num_clients=2).aggregate(1, ups + ups[:1], current)


def test_centroids_are_averaged_as_fedavg_and_carry_no_state():
    current = {W: torch.zeros(3, dtype=torch.float64), "centroids": torch.zeros(2, 3, dtype=torch.float64)}
    g = torch.Generator().manual_seed(5)
    ups = [Update(k, {W: torch.randn(3, generator=g, dtype=torch.float64),
                      "centroids": torch.randn(2, 3, generator=g, dtype=torch.float64),
                      CONTROL + W: torch.randn(3, generator=g, dtype=torch.float64)}, n)
           for k, n in (("a", 2), ("b", 7))]
    want = FedAvg().aggregate(1, ups, current)["centroids"]
    for name in ("feddyn", "scaffold"):
        strategy = make_strategy(name, num_clients=2)
        state = strategy.with_state(current)
        assert set(state) - set(current) == {(SERVER_ONLY if name == "feddyn" else CONTROL) + W}
        assert strategy.with_state(state) == state  # restored state is kept
        torch.testing.assert_close(strategy.aggregate(1, ups, state)["centroids"], want)
    # a local head keeps no state and gets no correction
    assert make_strategy("scaffold", local_params=("head",)).with_state(current) == current


def test_client_terms_and_updates_against_formulas():
    g = torch.Generator().manual_seed(11)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    names = {"head.lin.weight": (5, 3), "head.mlp.0.bias": (7,), "head.keep": (3, 1)}  # head.keep: local
    params = {k: rand(*s).requires_grad_() for k, s in names.items()}
    start = {k: rand(*s) for k, s in names.items()}
    own = {k: rand(*s) for k, s in names.items()}
    shared = [k for k in names if k != "head.keep"]

    dyn = make_strategy("feddyn", alpha=0.37, local_params=("head.keep",))
    value = dyn.client_penalty(params, start, own)
    want = sum(0.37 / 2 * ((params[k] - start[k]) ** 2).sum() - (own[k] * params[k]).sum() for k in shared)
    torch.testing.assert_close(value, want)
    grads = torch.autograd.grad(value, [params[k] for k in shared])
    for k, grad in zip(shared, grads):
        torch.testing.assert_close(grad, 0.37 * (params[k] - start[k]) - own[k])
    end = {k: v.detach() for k, v in params.items()}
    renewed, control = dyn.client_finish(own, start, end, steps=3, lr=0.1)
    assert control == {} and set(renewed) == set(shared)
    for k in shared:
        torch.testing.assert_close(renewed[k], own[k] - 0.37 * (end[k] - start[k]))

    sca = make_strategy("scaffold", local_params=("head.keep",))
    received = {**start, **{CONTROL + k: rand(*names[k]) for k in shared}}
    assert float(sca.client_penalty(params, received, own)) == 0  # the correction is a step, not a term
    before = {k: v.detach().clone() for k, v in params.items()}
    sca.client_step(params, received, own, lr=0.3)
    for k in shared:  # moved by −η (c − c_i); the local group is left alone
        torch.testing.assert_close(params[k].detach(), before[k] - 0.3 * (received[CONTROL + k] - own[k]))
    assert torch.equal(params["head.keep"].detach(), before["head.keep"])
    sca.client_step(params, {k: v for k, v in received.items() if not k.startswith(CONTROL)}, {}, lr=0.3)
    assert all(torch.equal(params[k].detach(), before[k] - 0.3 * (received[CONTROL + k] - own[k])) for k in shared)
    renewed, control = sca.client_finish(own, received, end, steps=3, lr=0.1)
    assert set(control) == {CONTROL + k for k in shared}
    for k in shared:
        new = own[k] - received[CONTROL + k] + (start[k] - end[k]) / (3 * 0.1)
        torch.testing.assert_close(renewed[k], new)
        torch.testing.assert_close(control[CONTROL + k], new - own[k])
    first, _ = sca.client_finish({}, received, end, steps=3, lr=0.1)  # c_i starts at zero
    k = shared[0]
    torch.testing.assert_close(first[k], -received[CONTROL + k] + (start[k] - end[k]) / 0.3)
    with pytest.raises(ValueError, match=r"fed.dyn_alpha"):
        make_strategy("feddyn", alpha=0.0)
    with pytest.raises(ValueError, match=r"fed.server_lr"):
        make_strategy("scaffold", server_lr=float("nan"))


def test_control_arrays_are_screened():
    current = make_strategy("scaffold").with_state({W: torch.ones(2)})
    good = {W: torch.ones(2), CONTROL + W: torch.full((2,), 1e6)}  # a large Δc is not a model move
    assert check_update(Update("a", good, 1), current, max_ratio=1.0) is None
    bad = Update("a", {**good, CONTROL + W: torch.tensor([float("nan"), 0.0])}, 1)
    assert check_update(bad, current) == f"a: {CONTROL + W} contains NaN or Inf"
    assert "missing ['control.head.w']" in check_update(Update("a", {W: torch.ones(2)}, 1), current)
    moved = Update("a", {W: torch.full((2,), 100.0), CONTROL + W: torch.zeros(2)}, 1)
    assert "more than fed.max_update_ratio=1.0" in check_update(moved, current, max_ratio=1.0)


TINY = ["data.sites=3", "data.images_per_site=8", "data.eval_images=6", "data.image_size=32", "data.eval_size=32",
        "train.local_steps=3", "train.batch_size=4", "fed.rounds=2", "fed.clients_per_round=2",
        "model.precision=\"fp32\""]
SUPERVISED = ["task=\"supervised\"", "data.split=\"class-erased\"", "loss.objective=\"backce\""]


@pytest.mark.parametrize("strategy", ["feddyn", "scaffold"])
@pytest.mark.parametrize("task", ["unsupervised", "supervised"])
def test_cli_runs_both_tasks(tmp_path, strategy, task):
    sets = TINY + (SUPERVISED if task == "supervised" else []) + [
        f"fed.strategy=\"{strategy}\"", f"cache_dir=\"{tmp_path.parent / 'shared-cache'}\""]
    assert main(["run", "--out", str(tmp_path), *[a for s in sets for a in ("--set", s)]]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    tensors = load_file(str(tmp_path / "checkpoint" / state["tensors"]))
    glob = {k.removeprefix("global/"): v for k, v in tensors.items() if k.startswith("global/")}
    prefix = SERVER_ONLY if strategy == "feddyn" else CONTROL
    heads = {k for k in glob if k.startswith("head.")}
    assert {k for k in glob if k.startswith(prefix)} == {prefix + k for k in heads}
    assert any(glob[prefix + k].abs().sum() > 0 for k in heads)  # the server's state moved
    travels = sum(v.numel() * v.element_size() for k, v in glob.items() if not k.startswith(SERVER_ONLY))
    for r in metrics["rounds"]:
        assert r["excluded"] == {} and len(r["sampled"]) == 2
        assert all(r["bytes"][s] == {"down": travels, "up": travels} for s in r["sampled"])
    sampled = {s for r in metrics["rounds"] for s in r["sampled"]}
    for site in sampled:  # every client that trained keeps its g_k / c_i in the checkpoint
        own = {k for k in tensors if k.startswith(f"client/{site}/strategy/")}
        assert own == {f"client/{site}/strategy/{k}" for k in heads}
    assert 0 <= metrics["final"]["global"]["miou"] <= 100


def test_config_keys():
    from fussfast.config import ConfigError, load_config
    from fussfast.fed import strategy_from_config

    config = load_config(None, ["task=\"supervised\"", "fed.strategy=\"feddyn\"", "fed.dyn_alpha=0.5"])
    strategy = strategy_from_config(config.fed, config.seed, num_clients=7)
    assert (strategy.name, strategy.alpha, strategy.num_clients) == ("feddyn", 0.5, 7)
    config = load_config(None, ["task=\"supervised\"", "fed.strategy=\"scaffold\"", "fed.server_lr=2"])
    assert strategy_from_config(config.fed, config.seed).server_lr == 2.0
    with pytest.raises(ConfigError, match="'fed.dyn_alpha' must be > 0"):
        load_config(None, ["fed.dyn_alpha=0"])
    with pytest.raises(ConfigError, match="'fed.server_lr' must be > 0"):
        load_config(None, ["fed.server_lr=-1"])


@pytest.mark.parametrize("task", ["unsupervised", "supervised"])
def test_scaffold_corrects_every_local_step_of_a_fit(tmp_path, task):
    """A fit with controls c − c_i = C ends, against the same fit with C = 0 (same batches), moved
    by −K η C on every corrected array, the head's and LoRA's, up to what Adam's own steps may
    differ between the two fits (each at most about η per coordinate)."""
    from fussfast.assemble import prepare
    from fussfast.config import load_config

    config = load_config(None, TINY + (SUPERVISED if task == "supervised" else []) + [
        "fed.strategy=\"scaffold\"", "model.backbone=\"vit_small_patch16_224.dino\"", "model.lora_rank=2",
        "model.lora_blocks=1", f"cache_dir=\"{tmp_path.parent / 'shared-cache'}\""])
    setup = prepare(config)
    start = setup.new_model().arrays()
    strategy = setup.strategy(start)
    received = strategy.with_state(start)
    assert {k for k in received if k.startswith(CONTROL + "lora.")}  # LoRA is corrected too
    C = {k: torch.full_like(v, 100.0) for k, v in received.items() if k.startswith(CONTROL)}
    ends = []
    for controls in ({k: torch.zeros_like(v) for k, v in C.items()}, C):
        client = setup.clients()["site0"]
        client.fit({**received, **controls}, strategy, torch.Generator().manual_seed(3))
        ends.append(client.model.arrays())
    K, lr = config.train.local_steps, config.train.head_lr
    for name in (k.removeprefix(CONTROL) for k in C):
        moved = ends[1][name].double() - ends[0][name].double()
        torch.testing.assert_close(moved, torch.full_like(moved, -K * lr * 100.0), rtol=0, atol=2.5 * K * lr)
