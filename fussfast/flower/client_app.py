"""The ClientApp: one site. Its head, centroids, Adam, MOON and strategy state live in the node's
``context.state`` between rounds; features come from the node's cache."""

from __future__ import annotations

import json
import zlib

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fussfast.assemble import crf_of, prepare
from fussfast.flower.common import (CLIENT_STATE, CLIENT_STATE_META, SITE, config_from, flat_scores, round_of, site_of,
                                    to_torch)

client_app = ClientApp()


def _site_client(context: Context):
    config = config_from(context)
    site = site_of(context, config)
    setup = prepare(config, sites=[site])
    client = setup.clients()[site]
    strategy = setup.strategy(client.model.arrays())
    if CLIENT_STATE in context.state.array_records:  # this node's state from its previous rounds
        meta = json.loads(context.state.config_records[CLIENT_STATE_META]["meta"])
        client.load_state("c", to_torch(context.state.array_records[CLIENT_STATE]), meta)
    return config, site, client, strategy


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    config, site, client, strategy = _site_client(context)
    # each site and round draws its own batches, reproducibly
    seed = ((config.seed * 1_000_003 + round_of(msg.content["config"])) << 32) + zlib.crc32(site.encode())
    generator = torch.Generator().manual_seed(seed % 2**63)
    update = client.fit(to_torch(msg.content["arrays"]), strategy, generator)
    tensors: dict[str, torch.Tensor] = {}
    meta = client.state("c", tensors)
    context.state.array_records[CLIENT_STATE] = ArrayRecord(tensors)
    context.state.config_records[CLIENT_STATE_META] = ConfigRecord({"meta": json.dumps(meta)})
    return Message(content=RecordDict({
        "arrays": ArrayRecord(update.arrays),
        "metrics": MetricRecord({"num-examples": update.num_samples, "loss": float(update.metrics["loss"])}),
        SITE: ConfigRecord({"name": site})}), reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    config, site, client, strategy = _site_client(context)
    client.model.load_arrays(strategy.model_arrays(to_torch(msg.content["arrays"])))
    s = client.evaluate(client.data.get(), config.data.num_classes, crf_of(config))
    return Message(content=RecordDict({
        "metrics": MetricRecord({"num-examples": client.num_samples, **flat_scores(s)}),
        SITE: ConfigRecord({"name": site})}), reply_to=msg)
