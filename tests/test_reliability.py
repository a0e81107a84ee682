"""Bad input and broken state, as a careless user or a hostile site would make them: each must be
refused with a message that names the key, file or site, never run on silently, and never end
in a traceback from the command line."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fussfast.config import ConfigError, keys, load_config
from fussfast.fed.checkpoint import CheckpointError
from fussfast.fed.server import Server
from fussfast.fed.strategy import Update, make_strategy
from fussfast.run import run

TINY = ["data.sites=2", "data.images_per_site=6", "data.eval_images=4", "data.image_size=32", "data.eval_size=32",
        "train.local_steps=2", "train.batch_size=4", "fed.rounds=1", "model.precision=\"fp32\"",
        "fed.strategy=\"fedavg\""]


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fussfast", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("override, message", [
    ("train.head_lr=inf", "'train.head_lr' must be a finite number"),
    ("train.head_lr=nan", "'train.head_lr' must be a finite number"),
    ("train.head_lr=-1e-3", "'train.head_lr' must be > 0"),
    ("train.head_lr=0", "'train.head_lr' must be > 0"),
    ("seed=-1", "'seed' must be >= 0"),
    ("loss.feature_samples=0", "'loss.feature_samples' must be >= 1"),
    ("data.image_size=100000", "'data.image_size' must be <= 8192"),
    ("data.alpha=nan", "'data.alpha' must be a finite number"),
    ("loss.num_neighbors=31", "'loss.num_neighbors' must be <= 30"),
    ("fed.max_update_ratio=0", "'fed.max_update_ratio' must be > 0"),
])
def test_bad_values_name_their_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(None, [override])


def test_image_sizes_fit_the_backbones_patch_size():
    dinov2 = 'model.backbone="vit_small_patch14_dinov2.lvd142m"'
    with pytest.raises(ConfigError, match=r"'data\.image_size' must be a multiple of the patch size 14 of "
                                          r"model\.backbone 'vit_small_patch14_dinov2\.lvd142m', got 64"):
        load_config(None, [dinov2])
    with pytest.raises(ConfigError, match=r"'data\.eval_size' must be a multiple of the patch size 14 .* got 64"):
        load_config(None, [dinov2, "data.image_size=70"])
    assert load_config(None, [dinov2, "data.image_size=70", "data.eval_size=42"]).data.eval_size == 42
    with pytest.raises(ConfigError, match=r"'data\.image_size' must be a multiple of the patch size 8 .* got 60"):
        load_config(None, ["data.image_size=60"])


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([name for name, _, _ in keys()]),
       st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                 st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=2)))
def test_any_value_of_any_key_is_a_config_or_a_config_error(name, value):
    raw = json.dumps(value, ensure_ascii=False) if not isinstance(value, float) or np.isfinite(value) else \
        ("nan" if np.isnan(value) else ("inf" if value > 0 else "-inf"))
    try:
        config = load_config(None, [f"{name}={raw}"])
    except ConfigError:
        return
    section, _, leaf = name.rpartition(".")
    got = getattr(getattr(config, section), leaf) if section else getattr(config, name)
    assert got == (tuple(value) if isinstance(value, list) else value) or isinstance(got, float)


def test_num_neighbors_beyond_a_site_is_refused(tmp_path):
    config = load_config(None, TINY + ["loss.num_neighbors=6", f"cache_dir=\"{tmp_path / 'c'}\""])
    with pytest.raises(ConfigError, match="'loss.num_neighbors' = 6, but site 'site0' has 6 images"):
        run(config, tmp_path / "out")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-round run directory, copied fresh for every test that breaks it."""
    base = tmp_path_factory.mktemp("finished")
    config = load_config(None, TINY + ["fed.rounds=1", f"cache_dir=\"{base / 'cache'}\""])
    run(config, base / "run")
    return config, base / "run"


def broken(finished, tmp_path):
    config, source = finished
    target = tmp_path / "run"
    shutil.copytree(source, target)
    return config.replace(["fed.rounds=2"]), target, target / "checkpoint"


def tensor_file(checkpoint):
    return checkpoint / json.loads((checkpoint / "state.json").read_text())["tensors"]


def flip_bits(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def edit_history(path):
    state = json.loads(path.read_text())
    state["history"][0]["global"]["miou"] = 99.0
    path.write_text(json.dumps(state))


@pytest.mark.parametrize("damage, message", [
    (lambda cp: flip_bits(tensor_file(cp)), "contents differ from the digest"),
    (lambda cp: truncate(tensor_file(cp)), "contents differ from the digest"),
    (lambda cp: tensor_file(cp).unlink(), "tensor file is missing"),
    (lambda cp: (cp / "state.json").write_text("{\"format\": "), "not valid JSON"),
    (lambda cp: edit_history(cp / "state.json"), "disagree on the rounds done"),
    (lambda cp: (cp.parent / "metrics.json").unlink(), "missing or unreadable beside the checkpoint"),
])
def test_a_broken_checkpoint_is_refused_by_name(finished, tmp_path, damage, message):
    config, out, checkpoint = broken(finished, tmp_path)
    damage(checkpoint)
    with pytest.raises(CheckpointError, match=message):
        run(config, out, resume=True)


def test_a_checkpoint_with_other_arrays_is_refused(finished, tmp_path):
    from safetensors.torch import load_file, save_file

    from fussfast._files import file_sha256

    config, out, checkpoint = broken(finished, tmp_path)
    path = tensor_file(checkpoint)
    tensors = load_file(str(path))
    name = next(k for k in tensors if k.startswith("global/head."))
    tensors[name] = tensors[name][..., :1].contiguous().double()
    save_file(tensors, str(path))
    state = json.loads((checkpoint / "state.json").read_text())
    state.update(bytes=path.stat().st_size, sha256=file_sha256(path))  # a consistent file with wrong contents
    (checkpoint / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=f"global arrays: {name.removeprefix('global/')} is torch.float64"):
        run(config, out, resume=True)


def test_cli_resume_of_a_corrupt_checkpoint_is_one_line(finished, tmp_path):
    config, out, checkpoint = broken(finished, tmp_path)
    flip_bits(tensor_file(checkpoint))
    args = ["run", "--resume", str(out)] + [a for s in TINY + ["fed.rounds=2", f"cache_dir=\"{config.cache_dir}\""]
                                            for a in ("--set", s)]
    result = cli(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "contents differ from the digest" in result.stderr and str(checkpoint) in result.stderr
    debug = cli("--debug", *args)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_cli_read_only_output_and_bad_report_are_one_line(finished, tmp_path):
    config, source = finished
    blocker = tmp_path / "a-file"  # a directory that cannot be made (as a full or read-only disk)
    blocker.write_text("")
    result = cli("run", "--out", str(blocker / "run"),
                 *[a for s in TINY + [f"cache_dir=\"{config.cache_dir}\""] for a in ("--set", s)])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"cannot write {blocker / 'run'}" in result.stderr
    metrics = json.loads((source / "metrics.json").read_text())
    del metrics["final"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text(json.dumps(metrics))
    result = cli("report", str(tmp_path / "bad"), "--out", str(tmp_path / "r.html"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not the metrics of a fussfast run (missing ['final'])" in result.stderr


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_data_errors_name_the_file(tmp_path):
    from fussfast.data.datasets import folder_federation

    images = tmp_path / "clients" / "a" / "images"
    write(images / "0.png", np.zeros((8, 8, 3), np.uint8))
    write(tmp_path / "val" / "images" / "0.png", np.zeros((8, 8, 3), np.uint8))
    masks = tmp_path / "clients" / "a" / "masks"
    write(masks / "0.png", np.full((8, 8), 7, np.uint8))
    sites, _ = folder_federation(tmp_path, 8, num_classes=3)
    with pytest.raises(ValueError, match=r"0\.png: mask id 7 is not a class 0\.\.2 or 255"):
        sites["a"][0]
    write(masks / "0.png", np.zeros((4, 8), np.uint8))
    with pytest.raises(ValueError, match=r"0\.png: mask is 8x4 but its image 0\.png is 8x8"):
        sites["a"][0]
    (images / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=f"{images / '0.png'}: not a readable image"):
        sites["a"][0]


def test_16_bit_images_keep_their_range(tmp_path):
    from fussfast.data.datasets import load_pair
    from fussfast.data.synthetic import IMAGENET_MEAN, IMAGENET_STD

    ramp = (np.arange(16, dtype=np.uint16)[None, :] * 4369).repeat(16, 0)  # 0 .. 65535
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    image, _ = load_pair(tmp_path / "deep.png", None, 16)
    pixels = image * torch.from_numpy(IMAGENET_STD) + torch.from_numpy(IMAGENET_MEAN)
    assert torch.allclose(pixels[0, 0], torch.linspace(0, 1, 16), atol=1e-5)  # not saturated at 255/65535


def hostile(name, arrays, n=10, loss=0.5):
    return Update(name, arrays, n, {"loss": loss})


def test_server_leaves_out_hostile_updates():
    current = {"head.w": torch.ones(4), "centroids": torch.ones(2, 2)}
    server = Server(make_strategy("fedavg"), current, max_samples=1000, max_update_ratio=10.0)
    good = {k: v + 0.1 for k, v in current.items()}
    replies = {
        "ok": hostile("ok", good),
        "greedy": hostile("greedy", good, n=10**9),
        "huge": hostile("huge", {k: v * 1e6 for k, v in current.items()}),
        "double": hostile("double", {k: v.double() for k, v in good.items()}),
        "nanloss": hostile("nanloss", good, loss=float("nan")),
        "extra": hostile("extra", {**good, "head.secret": torch.zeros(1)}),
        "failed": "failed: failed with MemoryError: out of memory",
    }
    record = server.round(1, replies)
    assert set(record["excluded"]) == set(replies) - {"ok"}
    assert "more than fed.max_samples=1000" in record["excluded"]["greedy"]
    assert "fed.max_update_ratio=10.0" in record["excluded"]["huge"]
    assert "torch.float64, expected torch.float32" in record["excluded"]["double"]
    assert "training loss is nan" in record["excluded"]["nanloss"]
    assert "extra ['head.secret']" in record["excluded"]["extra"]
    assert torch.allclose(server.current["head.w"], good["head.w"])  # only the good site counted


def test_flower_server_leaves_out_malformed_and_duplicate_replies():
    flwr = pytest.importorskip("flwr")  # noqa: F841
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fussfast.flower import FussfastStrategy

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    def reply(site, metrics):
        content = RecordDict({"arrays": ArrayRecord({"head.w": torch.ones(2)}), "metrics": MetricRecord(metrics),
                              "site": ConfigRecord({"name": site})})
        return Message(content=content, dst_node_id=0, message_type="train")

    s = FussfastStrategy(make_strategy("fedavg"), {"head.w": torch.zeros(2)})
    arrays, _ = s.aggregate_train(1, [reply("a", {"num-examples": 3, "loss": 0.1}), reply("b", {"loss": 0.1}),
                                      reply("a", {"num-examples": 3, "loss": 0.1})])
    assert arrays is not None and set(s.pending["excluded"]) == {"b", "a#2"}
    assert "malformed reply" in s.pending["excluded"]["b"] and "second reply" in s.pending["excluded"]["a#2"]


def test_reference_cosine_kmeans_on_repeated_points():
    from fussfast.ops import kmeans

    x = torch.nn.functional.normalize(torch.randn(300, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    x = torch.cat([x, x])  # equal directions: 1 - cos rounds to just below 0
    for seed in range(5):
        result = kmeans(x, 7, metric="cosine", backend="reference", seed=seed)
        assert result.inertia >= 0 and result.labels.unique().numel() == 7


@pytest.mark.parametrize("argument, value", [("n_init", 2**62), ("max_iter", 2**62), ("seed", 2**63)])
def test_kmeans_refuses_sizes_that_would_not_end(argument, value):
    from fussfast.ops import kmeans

    with pytest.raises(ValueError, match=f"{argument} must be <="):
        kmeans(torch.randn(10, 2), 2, **{argument: value}, backend="reference")


@pytest.mark.parametrize("scale", [0.0, 1e-310, 1e150])  # zero, denormal, huge
def test_fused_gradients_at_degenerate_vectors_match_the_reference(device, scale):
    """Codes, centroids and features of zero, denormal or huge norm: the fused ops' values and
    gradients are those of the reference (F.normalize's eps), never NaN."""
    from fussfast.ops import cluster_assign, cluster_assign_reference, correlation_loss, correlation_loss_reference

    g = torch.Generator().manual_seed(int(scale > 1) + 2 * int(scale == 0))

    def degenerate(*shape, where):
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
        t[where] = t[where] * scale if scale else 0.0
        return t.to(device).requires_grad_()

    z, c = degenerate(2, 5, 3, 4, where=(0, slice(None), 1, 2)), degenerate(3, 5, where=1)
    loss, _ = cluster_assign(z, c)
    ref, _ = cluster_assign_reference(z, c)
    grads = torch.autograd.grad(loss, (z, c))
    want = torch.autograd.grad(ref, (z, c))
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    for got, exp in zip(grads, want):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-9 * max(1.0, float(exp.abs().max())))

    f1, f2 = (degenerate(2, 6, 3, 3, where=(1, slice(None), 0, 0)) for _ in range(2))
    z1, z2 = degenerate(2, 4, 3, 3, where=(1, slice(None), 2, 2)), degenerate(2, 4, 3, 3, where=(0, slice(None), 0, 1))
    shift = torch.full((2,), 0.3, dtype=torch.float64, device=device)
    out, ref = correlation_loss(f1, f2, z1, z2, shift), correlation_loss_reference(f1, f2, z1, z2, shift)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(out.sum(), (z1, z2))
    want = torch.autograd.grad(ref.sum(), (z1, z2))
    for got, exp in zip(grads, want):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-9 * max(1.0, float(exp.abs().max())))


OOM_SCRIPT = """
import resource, torch
from fussfast.ops import cluster_assign, kmeans
def vm():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmSize')).split()[1]) * 1024
z, c = torch.randn(1, 512, 64, 64), torch.randn(8192, 512, requires_grad=True)
torch.autograd.grad(cluster_assign(z[..., :8, :8], c)[0], c)  # warm: threads and allocator up
# room for the inputs and the 134 MB of probabilities, not for the 268 MB of per-task gradients
resource.setrlimit(resource.RLIMIT_AS, (vm() + (200 << 20), resource.RLIM_INFINITY))
try:
    torch.autograd.grad(cluster_assign(z, c)[0], c)
    print("no error")
except MemoryError as e:
    print("MemoryError", e)
resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
print("still usable", kmeans(torch.randn(50, 3), 2).inertia >= 0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limit via /proc and setrlimit")
def test_out_of_memory_in_a_kernel_raises_and_the_process_goes_on():
    result = subprocess.run([sys.executable, "-c", OOM_SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]  # not 134: std::bad_alloc must not abort
    assert "MemoryError cluster_assign: out of memory" in result.stdout, result.stdout
    assert "still usable True" in result.stdout


def test_a_local_run_whose_model_goes_non_finite_stops_with_the_reason(tmp_path, monkeypatch):
    from fussfast.tasks import SiteModel

    real = SiteModel.train_steps

    def diverging(self, *args, **kwargs):
        losses = real(self, *args, **kwargs)
        with torch.no_grad():
            self.head.lin.weight.fill_(float("inf"))
        return losses[:-1] + [float("nan")]

    monkeypatch.setattr(SiteModel, "train_steps", diverging)
    config = load_config(None, TINY + ["fed.strategy=\"local\"", f"cache_dir=\"{tmp_path / 'c'}\""])
    with pytest.raises(RuntimeError, match="site0: its training loss is nan"):
        run(config, tmp_path / "out")


def test_a_write_that_dies_midway_keeps_the_previous_checkpoint(finished, tmp_path, monkeypatch):
    import fussfast.fed.checkpoint as checkpoint_module

    config, out, checkpoint = broken(finished, tmp_path)
    before = (checkpoint / "state.json").read_text()
    real = checkpoint_module.save_file

    def dies(tensors, path):
        real(dict(list(tensors.items())[:2]), path)  # part of the file is on disk, then the process is gone
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        run(config, out, resume=True)
    assert (checkpoint / "state.json").read_text() == before
    monkeypatch.setattr(checkpoint_module, "save_file", real)
    assert [r["round"] for r in run(config, out, resume=True)["rounds"]] == [1, 2]


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
from fussfast.__main__ import main
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))  # below one checkpoint
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(finished, tmp_path):
    config, out, checkpoint = broken(finished, tmp_path)
    before = (checkpoint / "state.json").read_text()
    args = ["run", "--resume", str(out)] + [a for s in TINY + ["fed.rounds=2", f"cache_dir=\"{config.cache_dir}\""]
                                            for a in ("--set", s)]
    result = subprocess.run([sys.executable, "-c", FULL_DISK, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"cannot write {checkpoint}" in result.stderr
    assert (checkpoint / "state.json").read_text() == before
