"""N virtual sites on Flower's simulation engine (``pip install "fussfast[simulation]"``: Ray).
The ClientApp and ServerApp of this package run unchanged; virtual SuperNode ``i`` (Flower's
``partition-id``) trains the data's ``i``-th site. ``fussfast flower-sim`` calls ``simulate``."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fussfast.assemble import make_data
from fussfast.config import ConfigError, load_config
from fussfast.flower.client_app import evaluate as client_evaluate
from fussfast.flower.client_app import train as client_train
from fussfast.flower.server_app import main as server_main


def apps(run_config: dict) -> tuple[ServerApp, ClientApp]:
    """The package's apps seeing ``run_config`` (the keys of examples/flower's pyproject) in every
    context: ``run_simulation`` gives them an empty run config. The node's ``state`` is shared, so
    a site keeps its state between rounds as on a SuperNode."""
    server, client = ServerApp(), ClientApp()

    def configured(context: Context) -> Context:  # a view: Flower forbids changing a node's run config
        return Context(run_id=context.run_id, node_id=context.node_id, node_config=context.node_config,
                       state=context.state, run_config={**context.run_config, **run_config})

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        server_main(grid, configured(context))

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        return client_train(msg, configured(context))

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return client_evaluate(msg, configured(context))

    return server, client


def simulate(config: str | None, overrides: list[str], out_dir: str | Path, *, supernodes: int = 0,
             cpus_per_site: float = 1.0, round_timeout: float = 3600.0, verbose: bool = False) -> int:
    """Runs the config with one virtual SuperNode per site (``supernodes``: 0 = as many as the data
    has sites; more would train some site twice) and returns that number. Writes ``out_dir`` as
    ``fussfast run`` does."""
    from flwr.simulation import run_simulation

    parsed = load_config(config, overrides)  # errors now, not in a Ray worker
    sites = len(make_data(parsed.data, parsed.seed, parsed.cache_dir)[0])
    n = supernodes or sites
    if n > sites:
        raise ConfigError(f"{n} virtual SuperNodes but the data has {sites} sites")
    run_config = {"config": str(Path(config).resolve()) if config else "", "set": "; ".join(overrides),
                  "out-dir": str(Path(out_dir).resolve()), "round-timeout": float(round_timeout), "resume": False}
    server, client = apps(run_config)
    backend = {"client_resources": {"num_cpus": cpus_per_site, "num_gpus": 0.0},
               "init_args": {"log_to_driver": verbose, "include_dashboard": False}}
    run_simulation(server, client, num_supernodes=n, backend_config=backend, verbose_logging=verbose)
    return n
