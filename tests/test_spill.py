"""Client states spilled to the run directory between rounds when only some sites are sampled:
the same results as keeping them in memory, memory bounded by the sampled clients, checkpoints
and resume unchanged, and nothing left behind."""

import gc
import weakref

import pytest
import torch
from safetensors.torch import load_file

from fussfast.assemble import prepare
from fussfast.config import load_config
from fussfast.fed.checkpoint import load_checkpoint
from fussfast.fed.client import Client
from fussfast.fed.loop import Federation
from fussfast.outputs import RunDir
from fussfast.run import run

TINY = ["data.image_size=16", "data.eval_size=16", "data.eval_images=4", "train.local_steps=2",
        "train.batch_size=4", "model.precision=\"fp32\"", "data.images_per_site=4"]
# MOON keeps each site's previous head, personalized centroids stay on the sites and make every
# round's scoring read every started client back
MOON = ["fed.strategy=\"moon\"", "fed.moon_mu=5.0", 'fed.local_params=["centroids"]']
SUPERVISED = ["task=\"supervised\"", "data.split=\"class-erased\"", "data.classes_per_site=2",
              "fed.strategy=\"fedavg\"", "fed.eval_every=0"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("spill-cache")


def tiny(cache, *extra):
    return load_config(None, TINY + [f"cache_dir=\"{cache}\"", *extra])


def rounds(federation, n):
    for r in range(1, n + 1):
        federation.history.append(federation.run_round(r))
    return [{k: v for k, v in record.items() if k != "seconds"} for record in federation.history]


def counting(monkeypatch, cls, method):
    """Counts calls of ``cls.method`` (which still runs)."""
    calls, real = [], getattr(cls, method)

    def wrapper(self, *args, **kwargs):
        calls.append(self.name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, wrapper)
    return calls


# a local MoE fine-tuned in a second phase: its arrays and Adam moments are spilled with the rest
MOE = ["fed.strategy=\"fedavg\"", "model.moe_experts=2", "model.moe_hidden=4", "fed.personal_steps=1",
       "fed.distill_weight=1.0"]


@pytest.mark.parametrize("task", ["moon", "supervised", "moe", "scaffold"])
def test_spilled_clients_continue_bit_identically(cache, tmp_path, monkeypatch, task):
    # scaffold: every client's c_i is spilled and read back too
    config = tiny(cache, "data.sites=5", "fed.clients_per_round=2", "fed.rounds=4",
                  *{"moon": MOON, "supervised": SUPERVISED, "moe": MOE,
                    "scaffold": ["fed.strategy=\"scaffold\""]}[task])
    kept = prepare(config).federation()  # prepare seeds torch: both federations start alike
    kept_records = rounds(kept, 4)
    reads = counting(monkeypatch, Client, "_read_back")
    spilled = prepare(config).federation(spill_dir=tmp_path / "spill")
    assert spilled.spill_dir is not None and kept.spill_dir is None
    assert rounds(spilled, 4) == kept_records  # losses, scores, sampling
    # 8 picks among 5 sites: some sites trained again after being spilled, from the state read back
    again = {n for r in kept_records for n in r["sampled"] if sum(n in q["sampled"] for q in kept_records) > 1}
    assert again and again <= set(reads)
    assert torch.equal(spilled.generator.get_state(), kept.generator.get_state())
    (kept_tensors, kept_meta), (spilled_tensors, spilled_meta) = kept.state(), spilled.state()
    assert spilled_meta["clients"] == kept_meta["clients"]
    assert set(kept_meta["clients"]) == {n for r in kept_records for n in r["sampled"]}
    assert spilled_tensors.keys() == kept_tensors.keys()
    differ = [k for k in kept_tensors if not torch.equal(spilled_tensors[k], kept_tensors[k])]
    assert not differ, differ  # models, Adam moments, MOON heads, RNG states: bit for bit
    if task == "moon":
        assert all(c["previous"] for c in spilled_meta["clients"].values())
    if task == "moe":
        assert any(k.endswith("/model/moe.router.weight") for k in kept_tensors)
        assert any("/opt/moe/" in k for k in kept_tensors)
    if task == "scaffold":  # the c_i of every started client, non-zero after its fit
        assert all(spilled_tensors[f"client/{n}/strategy/head.lin.weight"].abs().sum() > 0
                   for n in spilled_meta["clients"])


def test_memory_holds_at_most_the_sampled_clients(cache, tmp_path, monkeypatch):
    config = tiny(cache, "data.sites=8", "fed.clients_per_round=2", "fed.rounds=4", *MOON)
    alive, in_use = weakref.WeakSet(), []  # every client model built, while it lives; counts while in use

    def live() -> int:
        gc.collect()
        return len(alive)

    def federation(spill_dir):
        fed = prepare(config).federation(spill_dir=spill_dir)
        for c in fed.clients.values():
            c._new_model = tracked(c._new_model)
        return fed

    def tracked(make):
        def build():
            model = make()
            alive.add(model)
            return model
        return build

    def counted(real):
        def wrapper(*args, **kwargs):
            out = real(*args, **kwargs)
            in_use.append(live())
            return out
        return wrapper

    monkeypatch.setattr(Client, "fit", counted(Client.fit))  # after the fit, before it is put away
    monkeypatch.setattr(Federation, "_scoring", counted(Federation._scoring))
    spill = tmp_path / "spill"
    fed = federation(spill)
    for r in range(1, 5):
        fed.history.append(fed.run_round(r))
        started = {n for n, c in fed.clients.items() if c.started}
        assert live() == 0 and not any(c.in_memory for c in fed.clients.values())  # all put away
        assert {p.name for p in spill.iterdir()} == {fed.spill_files[n].name for n in started}
        assert all(fed.clients[n].spilled == fed.spill_files[n] for n in started)
    assert in_use and max(in_use) <= 1 < fed.per_round + 1  # one client's model at a time
    assert len(started) > fed.per_round  # more sites were trained than are sampled per round

    alive.clear()  # the same rounds without a spill folder keep every started client
    fed = federation(None)
    rounds(fed, 4)
    assert live() == len(started) > fed.per_round


def cut_at_round_3(monkeypatch):
    real, calls = Federation.run_round, []

    def interrupted(self, r):
        if r == 3 and not calls:
            calls.append(r)
            raise KeyboardInterrupt
        return real(self, r)

    monkeypatch.setattr(Federation, "run_round", interrupted)


def run_files(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


FINISHED = ["checkpoint", "checkpoint/state-00003.safetensors", "checkpoint/state.json", "metrics.json",
            "model.safetensors", "samples.safetensors"]


def test_spilling_run_resumes_and_leaves_no_files(cache, tmp_path, monkeypatch):
    extra = ["data.sites=5", "fed.clients_per_round=2", "fed.rounds=3", *MOON]
    spills = counting(monkeypatch, Client, "spill")
    in_memory = run(tiny(cache, *extra, "fed.keep_clients_in_memory=true"), tmp_path / "kept")
    assert not spills
    whole = run(tiny(cache, *extra), tmp_path / "whole")
    assert spills and run_files(tmp_path / "whole") == FINISHED  # spilled, and the spill folder is gone

    def comparable(metrics):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in metrics["rounds"]]

    assert comparable(whole) == comparable(in_memory)
    kept_tensors, kept_state = load_checkpoint(tmp_path / "kept" / "checkpoint")
    tensors, state = load_checkpoint(tmp_path / "whole" / "checkpoint")
    sampled = {n for r in whole["rounds"] for n in r["sampled"]}
    assert set(state["clients"]) == sampled == set(kept_state["clients"])  # every started client, spilled ones too
    assert tensors.keys() == kept_tensors.keys() and all(torch.equal(tensors[k], kept_tensors[k]) for k in tensors)

    # Ctrl-C in round 3: the spill folder goes, the checkpoint of round 2 stays
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        cut_at_round_3(m)
        with pytest.raises(KeyboardInterrupt):
            run(tiny(cache, *extra), cut)
    assert run_files(cut) == ["checkpoint", "checkpoint/state-00002.safetensors", "checkpoint/state.json",
                              "metrics.json"]
    # a run killed outright leaves its spill folder: resume must not read it, and removes it
    with monkeypatch.context() as m:
        cut_at_round_3(m)
        m.setattr(RunDir, "remove_spill", lambda self: None)
        with pytest.raises(KeyboardInterrupt):
            run(tiny(cache, *extra), tmp_path / "killed")
    stale = sorted((tmp_path / "killed" / "spill").iterdir())
    assert stale
    for path in stale:  # garbage: reading one back would fail
        path.write_bytes(b"not a client state")
    for out in (cut, tmp_path / "killed"):
        resumed = run(tiny(cache, *extra), out, resume=True)
        assert comparable(resumed) == comparable(whole)
        assert run_files(out) == FINISHED
        models = load_file(str(out / "model.safetensors"))
        assert models.keys() == load_file(str(tmp_path / "whole" / "model.safetensors")).keys()
        resumed_tensors, resumed_state = load_checkpoint(out / "checkpoint")
        assert resumed_state["clients"] == state["clients"]
        assert resumed_tensors.keys() == tensors.keys()
        assert all(torch.equal(resumed_tensors[k], tensors[k]) for k in tensors)
