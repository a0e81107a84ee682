"""The ServerApp: holds the shared evaluation set, aggregates with ``fussfast.fed.Server`` (the
same screening and round record as ``fussfast run``) and writes the same run directory.

Resume (run config ``resume = true``): the server carries on after the last round in
``out-dir/checkpoint`` with its global arrays and history. The sites' own state (Adam moments,
MOON's previous head, ``fed.local_params`` groups) lives in each SuperNode's memory: a SuperNode
that kept running keeps it; one that was restarted starts that state afresh, so such a run is
not identical to an uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fussfast.assemble import prepare
from fussfast.fed.checkpoint import expect_like, under
from fussfast.fed.loop import scored_round
from fussfast.fed.server import Server, TooFewUpdates
from fussfast.fed.strategy import Strategy, Update
from fussfast.flower.common import ROUND_OFFSET, SITE, config_from, flat_scores, nested_scores, to_torch
from fussfast.outputs import RunDir, check_resumable


class FussfastStrategy(FedAvg):
    """A Flower strategy whose aggregation is a fussfast ``Server``'s; ``offset``: rounds done
    before this ServerApp started. The round's record waits in ``pending`` for the evaluation."""

    def __init__(self, strategy: Strategy, current: dict[str, torch.Tensor], *, min_clients: int = 1,
                 offset: int = 0, limits: dict | None = None, rounds: int | None = None, eval_every: int = 1,
                 **kwargs):
        super().__init__(**kwargs)
        self.server = Server(strategy, current, min_clients=min_clients, **(limits or {}))
        self.offset, self.pending = offset, {}
        self.rounds, self.eval_every = rounds, eval_every

    def scored(self, server_round: int) -> bool:
        r = self.offset + server_round
        return self.rounds is None or scored_round(r, self.rounds, self.eval_every)

    def configure_evaluate(self, server_round, arrays, config, grid):
        if not self.scored(server_round):  # the sites score only the rounds that are scored
            return []
        return super().configure_evaluate(server_round, arrays, config, grid)

    @property
    def current(self) -> dict[str, torch.Tensor]:
        return self.server.current

    def initial_arrays(self) -> ArrayRecord:
        return ArrayRecord(self.server.shared())

    def aggregate_train(self, server_round: int, replies) -> tuple[ArrayRecord | None, MetricRecord | None]:
        start, r = time.perf_counter(), self.offset + server_round
        received: dict[str, Update | str] = {}
        for i, msg in enumerate(replies):
            if msg.has_error():
                received[f"node{msg.metadata.src_node_id}"] = f"error reply: {msg.error.reason}"
                continue
            name = str(msg.content[SITE]["name"]) if SITE in msg.content.config_records else f"reply{i}"
            if name in received:
                received[f"{name}#{i}"] = f"{name}: a second reply claims this site"
                continue
            try:
                metrics = msg.content["metrics"]
                received[name] = Update(name, to_torch(msg.content["arrays"]), int(metrics["num-examples"]),
                                        {"loss": float(metrics["loss"])})
            except (KeyError, TypeError, ValueError) as e:  # a malformed reply leaves out its site only
                received[name] = f"{name}: malformed reply ({type(e).__name__}: {e})"
        try:
            record = self.server.round(r, received)
        except TooFewUpdates as e:  # the global model stays; Flower's next round may bring more sites
            self.pending = {"round": r, **e.record, "seconds": time.perf_counter() - start}
            return None, None
        self.pending = {"round": r, **record, "seconds": time.perf_counter() - start}
        usable = len(received) - len(record["excluded"])
        return ArrayRecord(self.server.shared()), MetricRecord({"num-updates": usable})

    def aggregate_evaluate(self, server_round: int, replies) -> MetricRecord | None:
        clients = {}
        for msg in replies:
            if not msg.has_error():
                clients[str(msg.content[SITE]["name"])] = nested_scores(msg.content["metrics"])
        self.pending["clients"] = clients
        return None


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    started = time.perf_counter()
    config = config_from(context)
    out_dir = Path(str(context.run_config["out-dir"]))
    resume = bool(context.run_config.get("resume", False)) and (out_dir / "checkpoint" / "state.json").is_file()
    if resume:
        check_resumable(config, out_dir)
    setup = prepare(config, sites=[])  # the server holds only the shared evaluation set
    outputs = RunDir(out_dir, config, setup.device, setup.shared, setup.seconds, started, precision=setup.precision,
                     head_precision=setup.head_precision)
    global_model = setup.new_model()
    strategy = setup.strategy(global_model.arrays())
    current, history = strategy.with_state(global_model.arrays()), []  # FedDyn's h, SCAFFOLD's c included
    if resume:
        tensors, state = outputs.load_checkpoint()
        fresh, current = current, under(tensors, "global/")
        expect_like(current, fresh, "the checkpoint's global arrays")
        history = state["history"]
    fed, K = config.fed, config.data.num_classes
    # fed.clients_per_round: exactly that many nodes (Flower samples max(fraction * nodes, min_train_nodes))
    fraction, least = (1e-9, fed.clients_per_round) if fed.clients_per_round else (fed.fraction, fed.min_clients)
    flower = FussfastStrategy(strategy, current, min_clients=fed.min_clients, offset=len(history),
                              limits=setup.limits(), rounds=fed.rounds, eval_every=fed.eval_every,
                              fraction_train=fraction, fraction_evaluate=1.0, min_train_nodes=least,
                              min_evaluate_nodes=1, min_available_nodes=max(fed.min_clients, least))

    def server_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        pending = dict(flower.pending)
        record, clients = {"round": pending.pop("round")}, pending.pop("clients", {})
        if flower.scored(server_round):
            global_model.load_arrays(strategy.model_arrays(flower.current))
            record.update({"global": global_model.scores(setup.shared, K, setup.crf), "clients": clients})
        history.append({**record, **pending})
        outputs.save_round({f"global/{k}": v for k, v in flower.current.items()}, {"history": history, "clients": {}},
                           history)
        if "global" not in record:
            return None
        return MetricRecord(flat_scores(record["global"]))

    if len(history) < fed.rounds:
        flower.start(grid=grid, initial_arrays=flower.initial_arrays(), num_rounds=fed.rounds - len(history),
                     timeout=float(context.run_config.get("round-timeout", 3600)), evaluate_fn=server_evaluate,
                     train_config=ConfigRecord({ROUND_OFFSET: len(history)}))
    if not flower.server.strategy.local_params:  # personalized groups stay on the sites: no global model
        global_model.load_arrays(strategy.model_arrays(flower.current))
        outputs.save_models({"global": global_model}, setup.shared, setup.evaluation, K)
    outputs.write_metrics(history)
