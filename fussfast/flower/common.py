"""What both Flower apps read: the fussfast config from the run and node configs, the site of a
node, the round number, and ArrayRecords as torch tensors."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context

from fussfast.config import Config, load_config

SITE = "site"  # the ConfigRecord of a reply that names its site
CLIENT_STATE = "fussfast-client"  # the node's state between rounds (context.state): its tensors
# and, under its own name (a RecordDict holds one record per name, of any type), its JSON part
CLIENT_STATE_META = "fussfast-client-meta"
ROUND_OFFSET = "round-offset"  # train config: rounds completed before this ServerApp started (resume)


def config_from(context: Context) -> Config:
    """Run config ``config`` (a TOML file, "" for the defaults) and ``set`` (``;``-separated
    overrides); node config ``data-root`` and ``cache-dir`` override ``data.root`` and ``cache_dir``."""
    rc, node = context.run_config, context.node_config
    overrides = [s.strip() for s in str(rc.get("set", "")).split(";") if s.strip()]
    if node.get("data-root"):
        overrides.append(f'data.root="{node["data-root"]}"')
    if node.get("cache-dir"):
        overrides.append(f'cache_dir="{node["cache-dir"]}"')
    return load_config(str(rc.get("config", "")) or None, overrides)


def site_of(context: Context, config: Config) -> str:
    """The node's ``site``, or in a simulation the ``partition-id``-th site of the data."""
    node = context.node_config
    if SITE in node:
        return str(node[SITE])
    if "partition-id" in node:
        from fussfast.assemble import make_data

        names = list(make_data(config.data, config.seed, config.cache_dir)[0])
        return names[int(node["partition-id"]) % len(names)]
    raise ValueError("fussfast ClientApp: start the SuperNode with --node-config 'site=\"<name>\"'")


def round_of(config_record) -> int:
    """The federation's round number of a train message (Flower counts from 1 in every ServerApp run)."""
    return int(config_record.get(ROUND_OFFSET, 0)) + int(config_record["server-round"])


def flat_scores(scores: dict) -> dict[str, float]:
    """``LocalModel.scores`` as a MetricRecord's flat keys: ``miou``, ``crf-miou``, ..."""
    return {**{k: v for k, v in scores.items() if k != "crf"},
            **{f"crf-{k}": v for k, v in scores.get("crf", {}).items()}}


def nested_scores(metrics) -> dict:
    """``flat_scores``' inverse over a reply's MetricRecord (other keys, as num-examples, left out)."""
    out = {k: float(metrics[k]) for k in ("miou", "acc", "dice") if k in metrics}
    crf = {k: float(metrics[f"crf-{k}"]) for k in ("miou", "acc", "dice") if f"crf-{k}" in metrics}
    return {**out, "crf": crf} if crf else out


def to_torch(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in record.to_torch_state_dict().items()}
