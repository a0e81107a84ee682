"""The round loop through ``fussfast run``: sampling, MOON, personalization, distillation,
checkpoints, resume and Ctrl-C; the demo and its report."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from fussfast.config import ConfigError, load_config
from fussfast.fed.checkpoint import flatten, load_checkpoint, unflatten
from fussfast.run import run

TINY = ["data.sites=3", "data.images_per_site=10", "data.eval_images=6", "data.image_size=32",
        "data.eval_size=32", "train.local_steps=4", "train.batch_size=4", "fed.rounds=2", "model.precision=\"fp32\""]


def tiny(tmp_path, *extra):
    return load_config(None, TINY + [f"cache_dir=\"{tmp_path.parent / 'shared-cache'}\"", *extra])


def comparable(metrics):
    """Everything but wall times."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in metrics["rounds"]]


def test_client_sampling_by_count_and_fraction(tmp_path):
    metrics = run(tiny(tmp_path, "fed.strategy=\"fedavg\"", "fed.clients_per_round=2", "fed.rounds=3"), tmp_path / "a")
    for r in metrics["rounds"]:
        assert len(r["sampled"]) == 2
        left_out = set(r["clients"]) - set(r["sampled"])
        assert [r["bytes"][n] for n in left_out] == [{"down": 0, "up": 0}]
        assert set(r["loss"]) == set(r["sampled"])
    assert len({tuple(r["sampled"]) for r in metrics["rounds"]}) >= 1
    metrics = run(tiny(tmp_path, "fed.strategy=\"fedavg\"", "fed.fraction=0.34", "fed.rounds=1"), tmp_path / "b")
    assert len(metrics["rounds"][0]["sampled"]) == 2  # ceil(0.34 * 3)
    with pytest.raises(ConfigError, match="clients_per_round=4 but the federation has 3 clients"):
        run(tiny(tmp_path, "fed.strategy=\"fedavg\"", "fed.clients_per_round=4"), tmp_path / "c")
    with pytest.raises(ConfigError, match="min_clients=2 exceeds the 1 clients sampled"):
        run(tiny(tmp_path, "fed.strategy=\"fedavg\"", "fed.clients_per_round=1", "fed.min_clients=2"), tmp_path / "d")


def test_sampling_uses_every_client_over_rounds(tmp_path):
    metrics = run(tiny(tmp_path, "fed.strategy=\"fedavg\"", "fed.clients_per_round=1", "fed.rounds=6",
                       "train.local_steps=1"), tmp_path)
    picked = [r["sampled"][0] for r in metrics["rounds"]]
    assert len(set(picked)) >= 2, picked  # a fixed pick would mean the sampling is not random


def test_moon_runs_and_differs_from_fedavg(tmp_path):
    fedavg = run(tiny(tmp_path, "fed.strategy=\"fedavg\""), tmp_path / "fedavg")
    moon = run(tiny(tmp_path, "fed.strategy=\"moon\"", "fed.moon_mu=5.0"), tmp_path / "moon")
    # round 1: the previous local model is the global one, so the MOON term has no gradient
    assert moon["rounds"][0]["loss"] == fedavg["rounds"][0]["loss"]
    assert moon["rounds"][1]["loss"] != fedavg["rounds"][1]["loss"]
    tensors, state = load_checkpoint(tmp_path / "moon" / "checkpoint")
    assert all(c["previous"] for c in state["clients"].values())
    assert "client/site0/previous/lin.weight" in tensors


def test_personalized_centroids_stay_local(tmp_path):
    metrics = run(tiny(tmp_path, "fed.strategy=\"fedavg\"", 'fed.local_params=["centroids"]'), tmp_path)
    tensors, _ = load_checkpoint(tmp_path / "checkpoint")
    own = [tensors[f"client/site{i}/model/centroids"] for i in range(3)]
    assert not torch.equal(own[0], own[1]) and not torch.equal(own[1], own[2])
    heads = [tensors[f"client/site{i}/model/head.lin.weight"] for i in range(3)]
    torch.testing.assert_close(heads[0], tensors["global/head.lin.weight"])  # scored with the global head
    torch.testing.assert_close(heads[1], heads[0])
    centroid_bytes = own[0].numel() * 4
    full = run(tiny(tmp_path, "fed.strategy=\"fedavg\"", "fed.rounds=1"), tmp_path / "full")
    assert metrics["rounds"][0]["bytes"]["site0"]["up"] == full["rounds"][0]["bytes"]["site0"]["up"] - centroid_bytes
    model = load_file(str(tmp_path / "model.safetensors"))
    assert {k.split("/")[0] for k in model} == {"site0", "site1", "site2"}


def test_personalized_head_module_and_distillation(tmp_path):
    metrics = run(tiny(tmp_path, "fed.strategy=\"fedavg\"", 'fed.local_params=["head.lin"]', "fed.distill_weight=1.0",
                       "fed.distill=\"kl\""), tmp_path)
    tensors, _ = load_checkpoint(tmp_path / "checkpoint")
    assert not torch.equal(tensors["client/site0/model/head.lin.weight"], tensors["client/site1/model/head.lin.weight"])
    torch.testing.assert_close(tensors["client/site0/model/head.mlp.0.weight"],
                               tensors["client/site1/model/head.mlp.0.weight"])
    plain = run(tiny(tmp_path, "fed.strategy=\"fedavg\"", 'fed.local_params=["head.lin"]'), tmp_path / "plain")
    assert metrics["rounds"][0]["loss"] != plain["rounds"][0]["loss"]  # the distillation term changes training


@pytest.mark.parametrize("case", ["fedavg", "fedcc-kmeans", "supervised-fedavg"])
def test_moe_with_two_phase_rounds_cli(tmp_path, case):
    """``fussfast run`` with a local MoE and two-phase rounds: every site is scored with its own
    model (the global arrays plus its MoE), and the MoE never travels."""
    strategy = case.removeprefix("supervised-")
    extra = ["task=\"supervised\""] if case.startswith("supervised") else []
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fussfast", "run", "--out", str(out), "--set", "model.moe_experts=3",
           "--set", "fed.personal_steps=2", "--set", "fed.distill_weight=1", "--set", f"fed.strategy=\"{strategy}\"",
           *[a for s in TINY + extra + [f"cache_dir=\"{tmp_path.parent / 'shared-cache'}\""] for a in ("--set", s)]]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final"]["clients"]
    assert set(final) == {"site0", "site1", "site2"} and all(0 <= s["miou"] <= 100 for s in final.values())
    tensors, _ = load_checkpoint(out / "checkpoint")
    for site in ("site0", "site1"):  # each site's MoE trained on the site (the global copy never moves)
        assert not torch.equal(tensors[f"client/{site}/model/moe.router.weight"], tensors["global/moe.router.weight"])
    assert any(k.startswith("client/site0/opt/moe/") for k in tensors)  # its Adam moments
    head = tensors["global/head.lin.weight"]
    torch.testing.assert_close(tensors["client/site0/model/head.lin.weight"], head, rtol=0, atol=0)
    moe_bytes = sum(v.numel() * 4 for k, v in tensors.items() if k.startswith("client/site0/model/moe."))
    shared_bytes = sum(v.numel() * v.element_size() for k, v in tensors.items()
                       if k.startswith("global/") and not k.startswith("global/moe."))
    assert moe_bytes and metrics["rounds"][0]["bytes"]["site0"] == {"up": shared_bytes, "down": shared_bytes}
    model = load_file(str(out / "model.safetensors"))
    assert {k.split("/")[0] for k in model} == {"site0", "site1", "site2"} and "site2/moe.router.weight" in model


def test_local_params_errors(tmp_path):
    with pytest.raises(ConfigError, match="'head.nope' names no parameters"):
        run(tiny(tmp_path, "fed.strategy=\"fedavg\"", 'fed.local_params=["head.nope"]'), tmp_path)
    with pytest.raises(ConfigError, match="applies to federated strategies"):
        run(tiny(tmp_path, "fed.strategy=\"local\"", 'fed.local_params=["centroids"]'), tmp_path)
    with pytest.raises(ConfigError, match="must be a list of strings"):
        load_config(None, ["fed.local_params=[1]"])
    with pytest.raises(ConfigError, match="'fed.fraction' must be in"):
        load_config(None, ["fed.fraction=0"])
    with pytest.raises(ConfigError, match="'fed.moon_tau' must be > 0"):
        load_config(None, ["fed.moon_tau=0"])
    with pytest.raises(ConfigError, match="'fed.distill' must be one of"):
        load_config(None, ["fed.distill=\"l2\""])


def test_checkpoint_skeleton_round_trip():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.randn(3, 2))], lr=0.1)
    opt.param_groups[0]["params"][0].grad = torch.ones(3, 2)
    opt.step()
    tensors = {}
    skeleton = json.loads(json.dumps(flatten(opt.state_dict(), "opt", tensors)))
    back = unflatten(skeleton, tensors)
    assert back["param_groups"][0]["lr"] == 0.1 and list(back["state"]) == [0]
    torch.testing.assert_close(back["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(TypeError, match="cannot store"):
        flatten({"a": object()}, "x", {})


# MoE: the adapters and their Adam moments live on the sites, fine-tuned in a second phase
MOE = ["model.moe_experts=3", "model.moe_hidden=8", "fed.personal_steps=2", "fed.distill_weight=1.0"]
# LoRA: the adapted blocks run on the cached stem; the factors travel, the head's MLP stays local
LORA = ["model.lora_rank=2", "model.lora_blocks=1", "fed.local_params=[\"head.mlp\"]"]
# DP FedCC: the centroid noise comes from the run's generator, so a resumed run draws the same
DP = ["fed.dp_epsilon=8.0", "fed.dp_accountant=\"rdp\""]


@pytest.mark.parametrize("strategy", ["moon", "fedcc-maximin", "local", "supervised-moon", "moe-moon",
                                      "supervised-moe-fedavg", "feddyn", "supervised-scaffold", "lora-moe-fedavg",
                                      "autok-fedcc-kmeans", "dp-fedcc-kmeans"])
def test_resume_reaches_the_same_metrics(tmp_path, monkeypatch, strategy):
    name = strategy
    for prefix in ("supervised-", "lora-", "moe-", "autok-", "dp-"):
        name = name.removeprefix(prefix)
    extra = [f"fed.strategy=\"{name}\"", "fed.rounds=3", *(MOE if "moe-" in strategy else []),
             *(LORA if "lora-" in strategy else []), *(["fed.k_auto=true"] if "autok-" in strategy else []),
             *(DP if "dp-" in strategy else [])]
    if strategy != "local":
        extra.append("fed.clients_per_round=2")
    if strategy.startswith("supervised"):  # BackCE + contrast: the region memory is rebuilt each round
        extra += ["task=\"supervised\"", "data.split=\"class-erased\""]
    config = tiny(tmp_path, *extra)
    whole = run(config, tmp_path / "whole")

    from fussfast.fed.loop import Federation

    real, calls = Federation.run_round, []

    def interrupted(self, r):
        if r == 3 and not calls:
            calls.append(r)
            raise KeyboardInterrupt  # Ctrl-C during round 3
        return real(self, r)

    monkeypatch.setattr(Federation, "run_round", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["round"] == 2
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["completed_rounds"] == 2
    resumed = run(config, tmp_path / "cut", resume=True)
    assert comparable(resumed) == comparable(whole)
    if "autok-" in strategy:  # the estimate is recorded every round, the same after the resume
        assert all("k_estimate" in r for r in resumed["rounds"])
    if "moe-" in strategy:  # the personalized models are what is scored and saved
        assert resumed["rounds"][-1]["clients"] != whole["rounds"][0]["clients"]
        assert "site0/moe.router.weight" in load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert load_file(str(tmp_path / "cut" / "model.safetensors")).keys() == \
        load_file(str(tmp_path / "whole" / "model.safetensors")).keys()


def test_resume_checks(tmp_path):
    config = tiny(tmp_path, "fed.strategy=\"fedavg\"", "fed.rounds=1")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        run(config, tmp_path / "none", resume=True)
    run(config, tmp_path / "a")
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's in \['train.local_steps'\]"):
        run(tiny(tmp_path, "fed.strategy=\"fedavg\"", "train.local_steps=3"), tmp_path / "a", resume=True)
    more = run(tiny(tmp_path, "fed.strategy=\"fedavg\"", "fed.rounds=2"), tmp_path / "a", resume=True)
    assert [r["round"] for r in more["rounds"]] == [1, 2]  # training on for a round more


def test_ctrl_c_leaves_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "run"
    settings = TINY + ["fed.strategy=\"fedavg\"", "fed.rounds=40", f"cache_dir=\"{tmp_path / 'cache'}\""]
    args = [sys.executable, "-m", "fussfast", "run", "--out", str(out)] + [a for s in settings for a in ("--set", s)]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint" / "state.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Continue with: fussfast run CONFIG --resume" in err and "Traceback" not in err
    done = json.loads((out / "checkpoint" / "state.json").read_text())["round"]
    assert 1 <= done < 40
    resume = subprocess.run(args[:4] + ["--resume", str(out)] + args[6:] + ["--set", "fed.rounds=" + str(done + 1)],
                            capture_output=True, text=True, timeout=240)
    assert resume.returncode == 0, resume.stderr
    assert json.loads((out / "metrics.json").read_text())["completed_rounds"] == done + 1


def test_demo_end_to_end_writes_report(tmp_path):
    out = tmp_path / "demo"
    cli = subprocess.run([sys.executable, "-m", "fussfast", "demo", "--out", str(out)] +
                         [a for s in TINY + ["fed.rounds=2", f"cache_dir=\"{tmp_path / 'cache'}\""]
                          for a in ("--set", s)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.count("Dice") == 4  # the summary: every strategy's final mIoU and Dice
    summary = json.loads((out / "metrics.json").read_text())
    assert list(summary["strategies"]) == ["local", "fedavg", "fedcc-kmeans", "fedcc-maximin"]
    page = (out / "report.html").read_text()
    for text in ("mIoU and Dice per round", "Final results", "pairwise centroid distances", "Sample predictions",
                 "Communication per round", "fedcc-maximin", "site2 mIoU", "site2 Dice", "global Dice",
                 "data:image/png;base64,"):
        assert text in page, text
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing fetched
    assert page.count("<svg") == 8 + 4  # mIoU and Dice charts (global + 3 sites), 4 heatmaps
    assert page.count("<img") == 4 * (2 + 4)  # 4 samples: image, ground truth, one prediction per strategy

    from fussfast.__main__ import main

    assert main(["report", str(out / "local"), str(out / "fedavg"), "--out", str(tmp_path / "two.html")]) == 0
    assert (tmp_path / "two.html").read_text().count("<svg") == 8 + 2
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.html")]) == 2


def test_demo_of_chosen_strategies_shows_their_rows(tmp_path):
    """The new methods in the demo's report: FedDyn and SCAFFOLD rows, the setup column naming the
    MoE and the two-phase round, the CRF's figures; a bad strategy name fails before any work."""
    out = tmp_path / "demo"
    sets = TINY + ["fed.rounds=1", "task=\"supervised\"", "data.split=\"class-erased\"", "model.moe_experts=2",
                   "fed.personal_steps=1", "eval.crf=true", "eval.crf_iterations=2",
                   f"cache_dir=\"{tmp_path / 'cache'}\""]
    cli = subprocess.run([sys.executable, "-m", "fussfast", "demo", "--out", str(out), "--strategies",
                          "fedavg,feddyn,scaffold"] + [a for s in sets for a in ("--set", s)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert cli.returncode == 0, cli.stderr
    assert list(json.loads((out / "metrics.json").read_text())["strategies"]) == ["fedavg", "feddyn", "scaffold"]
    page = (out / "report.html").read_text()
    for text in ("fedavg vs feddyn vs scaffold", "<td>feddyn</td>", "<td>scaffold</td>",
                 "scaffold; MoE 2 experts (pixel); two-phase, 1 personal steps", "global mIoU (CRF)", "global Dice (CRF)"):
        assert text in page, text
    bad = subprocess.run([sys.executable, "-m", "fussfast", "demo", "--out", str(tmp_path / "x"), "--strategies",
                          "fedavg,fedsomething"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "fed.strategy" in bad.stderr and not (tmp_path / "x").exists()


def test_eval_every_scores_some_rounds_and_always_the_last(tmp_path):
    from fussfast.report import write_report

    metrics = run(tiny(tmp_path, "fed.strategy=\"fedavg\"", "fed.rounds=3", "fed.eval_every=2"), tmp_path / "a")
    assert ["global" in r for r in metrics["rounds"]] == [False, True, True]
    assert metrics["final"]["global"] == metrics["rounds"][-1]["global"]
    assert all("bytes" in r and "loss" in r for r in metrics["rounds"])  # training is recorded every round
    only_last = run(tiny(tmp_path, "fed.strategy=\"fedavg\"", "fed.rounds=3", "fed.eval_every=0"), tmp_path / "b")
    assert ["global" in r for r in only_last["rounds"]] == [False, False, True]
    assert comparable(only_last)[-1]["loss"] == comparable(metrics)[-1]["loss"]  # scoring changes no training
    page = write_report({"a": tmp_path / "a", "b": tmp_path / "b"}, tmp_path / "r.html").read_text()
    assert page.count("<svg") == 8 + 2 and "global Dice" in page  # 4 mIoU and 4 Dice charts, 2 heatmaps
