"""The same federation on Flower (``pip install "fussfast[flower]"``): a ClientApp and a ServerApp
that wrap ``fussfast.fed`` (no second training loop).

Run config (``[tool.flwr.app.config]`` or ``flwr run --run-config``), the same on every process:
``config`` (a fussfast TOML file, "" for the built-in defaults), ``set`` (``;``-separated
``KEY=VALUE`` overrides, as ``fussfast run --set``) and ``out-dir`` (where the ServerApp writes
``metrics.json`` and ``checkpoint/``, as ``fussfast run`` does). Node config (``flower-supernode
--node-config``): ``site`` (the site's name in the data) and optionally ``data-root`` and
``cache-dir``, which override ``data.root`` and ``cache_dir`` for that node. In a simulation, partition ``i`` is the data's ``i``-th site.

Each round the server sends the shared arrays (never the local parameter groups); a client
loads them over its own state (kept in the node's ``context.state``: head, centroids, Adam and
MOON state), trains ``train.local_steps`` steps and replies with its shared arrays and a
``MetricRecord``. ``FussfastStrategy.aggregate_train`` leaves out error replies and updates that
fail ``check_update`` and aggregates the rest with the fussfast strategy (FedAvg, FedProx, MOON,
FedCC-kMeans/Maximin). Clients then score the new global model on their own data; the server
scores it on the shared evaluation set.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fussfast.config import load_config
from fussfast.fed.checkpoint import save_checkpoint
from fussfast.fed.strategy import Strategy, Update, check_update

SITE, CLIENT_STATE = "site", "fussfast-client"


def config_from(context: Context) -> dict:
    rc, node = context.run_config, context.node_config
    overrides = [s.strip() for s in str(rc.get("set", "")).split(";") if s.strip()]
    if node.get("data-root"):
        overrides.append(f'data.root="{node["data-root"]}"')
    if node.get("cache-dir"):
        overrides.append(f'cache_dir="{node["cache-dir"]}"')
    return load_config(str(rc["config"]) or None, overrides)


def site_of(context: Context, config: dict) -> str:
    """The node's ``site``, or in a simulation the ``partition-id``-th site of the data."""
    node = context.node_config
    if SITE in node:
        return str(node[SITE])
    if "partition-id" in node:
        from fussfast.run import make_data

        names = list(make_data(config["data"], config["seed"])[0])
        return names[int(node["partition-id"]) % len(names)]
    raise ValueError("fussfast ClientApp: start the SuperNode with --node-config 'site=\"<name>\"'")


def _to_torch(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in record.to_torch_state_dict().items()}


def _site_client(context: Context):
    from fussfast.run import prepare, strategy_from_config

    config = config_from(context)
    site = site_of(context, config)
    setup = prepare(config, sites=[site])
    client = setup.clients()[site]
    strategy = strategy_from_config(config, client.model.arrays())
    if CLIENT_STATE in context.state.array_records:  # this node's state from its previous rounds
        meta = json.loads(context.state.config_records[CLIENT_STATE]["meta"])
        client.load_state("c", _to_torch(context.state.array_records[CLIENT_STATE]), meta)
    return config, site, client, strategy


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    config, site, client, strategy = _site_client(context)
    server_round = int(msg.content["config"]["server-round"])
    # each site and round draws its own batches, reproducibly
    seed = ((config["seed"] * 1_000_003 + server_round) << 32) + zlib.crc32(site.encode())
    generator = torch.Generator().manual_seed(seed % 2**63)
    update = client.fit(_to_torch(msg.content["arrays"]), strategy, generator)
    tensors: dict[str, torch.Tensor] = {}
    meta = client.state("c", tensors)
    context.state.array_records[CLIENT_STATE] = ArrayRecord(tensors)
    context.state.config_records[CLIENT_STATE] = ConfigRecord({"meta": json.dumps(meta)})
    return Message(content=RecordDict({
        "arrays": ArrayRecord(update.arrays),
        "metrics": MetricRecord({"num-examples": update.num_samples, "loss": float(update.metrics["loss"])}),
        SITE: ConfigRecord({"name": site})}), reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    config, site, client, strategy = _site_client(context)
    client.model.load_arrays(strategy.shared(_to_torch(msg.content["arrays"])))
    s = client.evaluate(client.data, config["data"]["num_classes"])
    return Message(content=RecordDict({
        "metrics": MetricRecord({"num-examples": client.num_samples, "miou": s["miou"], "acc": s["acc"]}),
        SITE: ConfigRecord({"name": site})}), reply_to=msg)


class FussfastStrategy(FedAvg):
    """A Flower strategy that aggregates with a fussfast ``Strategy``: heads averaged, centroids
    combined as the strategy does (FedCC pools and re-clusters them with ``fussfast.ops``).
    Keeps the full global arrays (``current``; local groups included, which never travel) and
    the per-round records in ``fussfast run``'s format."""

    def __init__(self, strategy: Strategy, current: dict[str, torch.Tensor], **kwargs):
        super().__init__(**kwargs)
        self.strategy, self.current = strategy, dict(current)
        self.history: list[dict] = []
        self.pending: dict = {}

    def initial_arrays(self) -> ArrayRecord:
        return ArrayRecord(self.strategy.shared(self.current))

    def aggregate_train(self, server_round: int, replies) -> tuple[ArrayRecord | None, MetricRecord | None]:
        start = time.perf_counter()
        shared_now = self.strategy.shared(self.current)
        updates, excluded, losses, sites = [], {}, {}, []
        for i, msg in enumerate(replies):
            if msg.has_error():
                excluded[f"node{msg.metadata.src_node_id}"] = f"error reply: {msg.error.reason}"
                continue
            name = str(msg.content[SITE]["name"]) if SITE in msg.content.config_records else f"reply{i}"
            metrics = msg.content["metrics"]
            update = Update(name, _to_torch(msg.content["arrays"]), int(metrics["num-examples"]),
                            {"loss": float(metrics["loss"])})
            sites.append(name)
            reason = check_update(update, shared_now)
            if reason:
                excluded[name] = reason
            else:
                updates.append(update)
                losses[name] = update.metrics["loss"]
        size = sum(v.numel() * v.element_size() for v in shared_now.values())
        self.pending = {"round": server_round, "loss": losses, "sampled": sites, "excluded": excluded,
                        "bytes": {s: {"down": size, "up": size if s not in excluded else 0} for s in sites}}
        if not updates:
            self.pending["seconds"] = time.perf_counter() - start
            return None, None
        before = self.current.get("centroids")
        self.current = self.strategy.aggregate(server_round, updates, self.current)
        if before is not None:
            self.pending["centroid_shift"] = float((self.current["centroids"] - before).norm())
        self.pending["seconds"] = time.perf_counter() - start
        return ArrayRecord(self.strategy.shared(self.current)), MetricRecord({"num-updates": len(updates)})

    def aggregate_evaluate(self, server_round: int, replies) -> MetricRecord | None:
        clients = {}
        for msg in replies:
            if not msg.has_error():
                m = msg.content["metrics"]
                clients[str(msg.content[SITE]["name"])] = {"miou": float(m["miou"]), "acc": float(m["acc"])}
        self.pending["clients"] = clients
        return None


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from fussfast.run import _write, prepare, strategy_from_config

    t0 = time.perf_counter()
    config = config_from(context)
    out_dir = Path(str(context.run_config["out-dir"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    setup = prepare(config, sites=[])  # the server holds only the shared evaluation set
    global_model = setup.new_model()
    strategy = strategy_from_config(config, global_model.arrays())
    fed, K = config["fed"], config["data"]["num_classes"]
    flower = FussfastStrategy(strategy, global_model.arrays(), fraction_train=fed["fraction"],
                              fraction_evaluate=1.0, min_train_nodes=fed["min_clients"],
                              min_evaluate_nodes=1, min_available_nodes=fed["min_clients"])

    def server_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        global_model.load_arrays(flower.current)
        record = {"round": server_round, "global": global_model.scores(setup.shared, K), "clients": {},
                  **flower.pending}
        flower.history.append(record)
        tensors = {f"global/{k}": v for k, v in flower.current.items()}
        save_checkpoint(out_dir / "checkpoint", server_round, tensors,
                        {"config": config, "history": flower.history, "clients": {}})
        _write(config, out_dir, setup.device, setup.shared, K, flower.history, t0, setup.seconds)
        return MetricRecord({"miou": record["global"]["miou"], "acc": record["global"]["acc"]})

    flower.start(grid=grid, initial_arrays=flower.initial_arrays(), num_rounds=fed["rounds"],
                 timeout=float(context.run_config.get("round-timeout", 3600)), evaluate_fn=server_evaluate)
