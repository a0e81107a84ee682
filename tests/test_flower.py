"""The Flower apps: the custom strategy on hand-built replies, and a real loopback deployment
(one flower-superlink, two flower-supernode processes, `flwr run`). Skipped only without flwr."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

flwr = pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402

from fussfast.fed import make_strategy  # noqa: E402
from fussfast.flower import FussfastStrategy  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flower"


def reply(site, n, w, centroids, loss=0.5):
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as in a ServerApp process
    arrays = ArrayRecord({"head.w": torch.tensor(w, dtype=torch.float64),
                          "centroids": torch.tensor(centroids, dtype=torch.float64)})
    return Message(content=RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": n, "loss": loss}),
                                       "site": ConfigRecord({"name": site})}), dst_node_id=0, message_type="train")


CURRENT = {"head.w": torch.zeros(2, dtype=torch.float64), "centroids": torch.zeros(2, 1, dtype=torch.float64)}


def test_aggregate_train_fedcc_maximin_by_hand():
    s = FussfastStrategy(make_strategy("fedcc-maximin"), CURRENT)
    arrays, metrics = s.aggregate_train(1, [reply("a", 1, [1.0, 2.0], [[0.0], [10.0]]),
                                            reply("b", 3, [5.0, 6.0], [[2.0], [20.0]])])
    out = arrays.to_torch_state_dict()
    assert out["head.w"].tolist() == [4.0, 5.0]  # sample-weighted mean of the heads
    assert out["centroids"].tolist() == [[0.0], [20.0]]  # pooled [0, 10, 2, 20], farthest-first from 0
    assert metrics["num-updates"] == 2
    assert s.pending["bytes"]["a"] == {"down": 32, "up": 32} and s.pending["excluded"] == {}
    assert s.pending["centroid_shift"] == pytest.approx(20.0)


def test_aggregate_train_leaves_out_bad_replies_and_keeps_local_groups():
    current = {**CURRENT, "centroids": torch.full((2, 1), 7.0, dtype=torch.float64)}
    s = FussfastStrategy(make_strategy("fedavg", local_params=("centroids",)), current)
    assert set(s.initial_arrays().keys()) == {"head.w"}  # local groups never travel
    good = reply("a", 1, [1.0, 2.0], [[0.0], [1.0]])
    good.content["arrays"] = ArrayRecord({"head.w": torch.tensor([1.0, 2.0], dtype=torch.float64)})
    bad = reply("b", 3, [float("nan"), 6.0], [[2.0], [20.0]])
    bad.content["arrays"] = ArrayRecord({"head.w": torch.tensor([float("nan"), 6.0], dtype=torch.float64)})
    arrays, _ = s.aggregate_train(2, [good, bad])
    assert arrays.to_torch_state_dict()["head.w"].tolist() == [1.0, 2.0]
    assert s.pending["excluded"] == {"b": "b: head.w contains NaN or Inf"}
    assert s.current["centroids"].tolist() == [[7.0], [7.0]]
    s2 = FussfastStrategy(make_strategy("fedavg"), CURRENT)
    assert s2.aggregate_train(1, []) == (None, None)


def test_aggregate_train_scaffold_counts_control_bytes():
    """c goes down with x and Δc comes up with y: both in the round's bytes; c ← c + ΣΔc / N."""
    s = FussfastStrategy(make_strategy("scaffold", num_clients=4), {"head.w": torch.zeros(2, dtype=torch.float64)})
    assert set(s.initial_arrays().keys()) == {"head.w", "control.head.w"}
    replies = []
    for site, n, w, dc in (("a", 1, [1.0, 2.0], [4.0, 0.0]), ("b", 3, [5.0, 6.0], [0.0, 8.0])):
        msg = reply(site, n, w, [[0.0]])
        msg.content["arrays"] = ArrayRecord({"head.w": torch.tensor(w, dtype=torch.float64),
                                             "control.head.w": torch.tensor(dc, dtype=torch.float64)})
        replies.append(msg)
    arrays, _ = s.aggregate_train(1, replies)
    out = arrays.to_torch_state_dict()
    assert out["head.w"].tolist() == [4.0, 5.0] and out["control.head.w"].tolist() == [1.0, 2.0]
    assert s.pending["bytes"]["a"] == {"down": 32, "up": 32} and s.pending["excluded"] == {}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url, proc, timeout):
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the SuperLink did not come up at {url}") from None
            time.sleep(0.3)


@pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="flwr's CLI is not on PATH")
@pytest.mark.parametrize("task", ["fed.strategy=\"fedcc-maximin\"",
                                  "fed.strategy=\"scaffold\"; task=\"supervised\"; data.split=\"class-erased\"; "
                                  "model.lora_rank=2; model.lora_blocks=1; eval.crf=true; eval.crf_iterations=3"])
def test_loopback_deployment_two_rounds(tmp_path, task):
    home = tmp_path / "flwr"
    env = {**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    link, fleet, control = free_port(), free_port(), free_port()
    (home / "cli").mkdir(parents=True)
    (home / "cli" / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n[superlink.loopback]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
    out = tmp_path / "out"
    overrides = ("data.sites=2; data.images_per_site=10; data.eval_images=6; data.image_size=32; data.eval_size=32; "
                 f"train.local_steps=4; train.batch_size=4; fed.rounds=2; {task}; "
                 f"fed.min_clients=2; model.precision=\"fp32\"; cache_dir=\"{tmp_path / 'cache'}\"")
    procs = []

    def start(args, name):
        log = open(tmp_path / f"{name}.log", "w")
        procs.append(subprocess.Popen(args, env={**env, "FLWR_HOME": str(home / name)}, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))

    t0 = time.monotonic()
    try:
        start(["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link),
               "--fleet-api-address", f"127.0.0.1:{fleet}", "--control-api-address", f"127.0.0.1:{control}",
               "--disable-runtime-dependency-installation"], "superlink")
        for i in range(2):
            start(["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}", "--host", "127.0.0.1",
                   "--port", str(free_port()), "--node-config", f'site="site{i}"'], f"site{i}")
        wait_until_up(f"http://127.0.0.1:{link}/health", procs[0], timeout=120)
        run_config = tmp_path / "run_config.toml"  # a file: overrides hold quotes and spaces
        run_config.write_text(f"set = '{overrides}'\nout-dir = '{out}'\nround-timeout = 240.0\n")

        def flwr_run():
            return subprocess.run(["flwr", "run", str(EXAMPLE), "loopback", "--stream", "--run-config",
                                   str(run_config)], env={**env, "FLWR_HOME": str(home / "cli")}, capture_output=True,
                                  text=True, timeout=420)

        result = flwr_run()
        wall = time.monotonic() - t0
        if "fedcc" in task and result.returncode == 0:  # the server carries on from its checkpoint
            first = json.loads((out / "metrics.json").read_text())["rounds"]
            run_config.write_text(f"set = '{overrides.replace('fed.rounds=2', 'fed.rounds=3')}'\nout-dir = '{out}'\n"
                                  "round-timeout = 240.0\nresume = true\n")
            resumed = flwr_run()
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    logs = "\n".join((tmp_path / f"{n}.log").read_text()[-3000:] for n in ("superlink", "site0", "site1"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:] + logs
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]][:2] == [1, 2], result.stdout[-4000:] + logs
    for r in metrics["rounds"]:
        assert sorted(r["sampled"]) == ["site0", "site1"] and r["excluded"] == {}
        if "fedcc" in task:
            assert r["centroid_shift"] > 0  # the global centroids changed every round
        assert set(r["clients"]) == {"site0", "site1"} and 0 <= r["global"]["miou"] <= 100
        for scores in (r["global"], *r["clients"].values()):  # the sites' Dice (and CRF figures) travel too
            assert 0 <= scores["dice"] <= 100 and ("crf" in scores) == ("eval.crf" in task)
    if "fedcc" in task:
        assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
        assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
        assert metrics["rounds"][:2] == first  # the first two rounds are kept as they were
        assert json.loads((out / "checkpoint" / "state.json").read_text())["round"] == 3
    else:  # scaffold: c travels with the model, each site's c_i stays in its SuperNode's context.state
        state = json.loads((out / "checkpoint" / "state.json").read_text())
        assert state["round"] == 2
        glob = {k.removeprefix("global/"): v for k, v in load_file(str(out / "checkpoint" / state["tensors"])).items()}
        heads = {k for k in glob if k.startswith("head.")}
        lora = {k for k in glob if k.startswith("lora.")}  # LoRA's factors are corrected too
        assert lora and {k for k in glob if k.startswith("control.")} == {"control." + k for k in heads | lora}
        assert all(glob["control." + k].abs().sum() > 0 for k in heads)  # c moved
        size = sum(v.numel() * v.element_size() for v in glob.values())  # the model and c
        assert all(r["bytes"][s] == {"down": size, "up": size} for r in metrics["rounds"] for s in r["sampled"])
    print(f"loopback: 2 rounds in {wall:.1f} s")


def test_unscored_rounds_send_no_evaluation():
    s = FussfastStrategy(make_strategy("fedavg"), CURRENT, rounds=5, eval_every=2, offset=2)
    assert [s.scored(r) for r in (1, 2, 3)] == [False, True, True]  # rounds 3, 4, 5 of the federation
    assert s.configure_evaluate(1, None, None, None) == []


def test_client_app_keeps_the_moe_in_the_node_state(tmp_path):
    """The ClientApp's reply carries no MoE; the node's ``context.state`` carries the MoE and its
    Adam moments into the next round's client."""
    from flwr.app import Context

    from fussfast.assemble import prepare
    from fussfast.config import load_config
    from fussfast.flower.client_app import _site_client, train
    from fussfast.flower.common import CLIENT_STATE, to_torch

    overrides = ["data.sites=2", "data.images_per_site=6", "data.eval_images=4", "data.image_size=16",
                 "data.eval_size=16", "train.local_steps=2", "train.batch_size=3", "model.precision=\"fp32\"",
                 "fed.strategy=\"fedavg\"", "model.moe_experts=2", "model.moe_hidden=4", "fed.personal_steps=2",
                 "fed.distill_weight=1.0", f"cache_dir=\"{tmp_path / 'cache'}\""]
    context = Context(run_id=1, node_id=0, node_config={"site": "site1"}, state=RecordDict(),
                      run_config={"set": "; ".join(overrides)})
    setup = prepare(load_config(None, overrides), sites=["site1"])
    fresh = setup.site_model("site1").arrays()
    shared = {k: v for k, v in fresh.items() if not k.startswith("moe.")}
    reply("site1", 1, [0.0], [[0.0]])  # sets the task identity a Message needs
    msg = Message(content=RecordDict({"arrays": ArrayRecord(shared), "config": ConfigRecord({"server-round": 1})}),
                  dst_node_id=0, message_type="train")
    out = train(msg, context)
    assert set(to_torch(out.content["arrays"])) == set(shared)  # the MoE never travels
    state = to_torch(context.state.array_records[CLIENT_STATE])
    assert any(k.startswith("c/opt/moe/") for k in state)
    assert not torch.equal(state["c/model/moe.router.weight"], fresh["moe.router.weight"])  # fine-tuned
    _, _, client, strategy = _site_client(context)  # the next round's client, built from the node's state
    assert strategy.local_params == ("moe",)
    for k, v in client.model.arrays().items():
        assert torch.equal(v, state[f"c/model/{k}"]), k


def test_evaluate_replies_carry_dice_and_crf():
    from fussfast.flower.common import flat_scores, nested_scores

    scores = {"miou": 40.0, "acc": 70.0, "dice": 55.0, "crf": {"miou": 45.0, "acc": 72.0, "dice": 60.0}}
    flat = flat_scores(scores)
    assert flat == {"miou": 40.0, "acc": 70.0, "dice": 55.0, "crf-miou": 45.0, "crf-acc": 72.0, "crf-dice": 60.0}
    plain = {k: scores[k] for k in ("miou", "acc", "dice")}
    s = FussfastStrategy(make_strategy("fedavg"), CURRENT)
    replies = []
    for site, sent in (("a", scores), ("b", plain)):
        msg = reply(site, 1, [0.0, 0.0], [[0.0], [0.0]])
        msg.content["metrics"] = MetricRecord({"num-examples": 3, **flat_scores(sent)})
        replies.append(msg)
    s.aggregate_evaluate(1, replies)
    assert s.pending["clients"] == {"a": scores, "b": plain}
    assert nested_scores(MetricRecord({"num-examples": 3, **flat})) == scores
