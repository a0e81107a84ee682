"""``fussfast run``: a federation from a config, unsupervised (FUSS) or supervised (FedSeg,
``task = "supervised"``), in one process. Besides the federated strategies, the FUSS paper's
baselines: ``centralized`` (one site holds all the data) and ``local`` (every site trains alone)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fussfast.assemble import prepare
from fussfast.config import Config
from fussfast.outputs import RunDir, check_resumable


def run(config: Config, out_dir: str | Path, *, resume: bool = False) -> dict:
    """Trains and evaluates ``config`` into ``out_dir`` and returns its metrics.json content;
    ``resume=True`` carries on from ``out_dir``'s checkpoint."""
    started = time.perf_counter()
    if resume:
        check_resumable(config, out_dir)  # before the (slow) feature extraction
    setup = prepare(config)
    outputs = RunDir(out_dir, config, setup.device, setup.shared, setup.seconds, started, precision=setup.precision,
                     head_precision=setup.head_precision)

    def after_round(federation):
        tensors, state = federation.state()
        outputs.save_round(tensors, state, federation.history)

    outputs.remove_spill()  # what a killed run left: the checkpoint, not the spill, is what resumes
    federation = setup.federation(after_round, spill_dir=outputs.spill)
    try:
        if resume:
            federation.load_state(*outputs.load_checkpoint())
            print(f"resuming {out_dir} after round {len(federation.history)}/{config.fed.rounds}", file=sys.stderr)
        try:
            history = federation.run()
        except KeyboardInterrupt:
            print(f"\ninterrupted; {out_dir}/checkpoint holds round {len(federation.history)}. Continue with: "
                  f"fussfast run CONFIG --resume {out_dir}", file=sys.stderr)
            raise
        outputs.save_models(federation.models(), setup.shared, setup.evaluation, config.data.num_classes)
    finally:
        outputs.remove_spill()
    return outputs.write_metrics(history)
