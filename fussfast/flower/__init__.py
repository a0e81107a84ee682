"""The same federation on Flower (``pip install "fussfast[flower]"``): a ClientApp and a ServerApp
over the in-process building blocks (``fussfast.assemble`` builds both sides, ``fussfast.fed.Server``
screens and aggregates, ``fussfast.outputs`` writes the run directory). There is no second
training loop. Deployment and the run/node config keys: examples/flower/README.md."""

from fussfast.flower.client_app import client_app
from fussfast.flower.server_app import FussfastStrategy, server_app

__all__ = ["FussfastStrategy", "client_app", "server_app"]
