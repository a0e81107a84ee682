"""The server's half of a round, shared by the in-process loop and the Flower app so that the two
cannot drift: screen the replies, aggregate the usable ones, and record what happened (losses,
exclusions with their reasons, bytes per site, how far the centroids moved)."""

from __future__ import annotations

import sys

import torch

from fussfast.fed.strategy import CENTROIDS, Strategy, Update, check_update


class TooFewUpdates(RuntimeError):
    """A round had fewer usable updates than ``fed.min_clients``; ``record``: what it received."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record


class Server:
    """The global arrays (``current``, local groups and the strategy's state included, see
    ``Strategy.with_state``) and the strategy that updates them; ``max_samples`` and
    ``max_update_ratio`` bound what a site may claim and change (``check_update``)."""

    def __init__(self, strategy: Strategy, current: dict[str, torch.Tensor], *, min_clients: int = 1,
                 max_samples: int | None = None, max_update_ratio: float | None = None):
        self.strategy, self.current, self.min_clients = strategy, strategy.with_state(current), min_clients
        self.limits = {"max_samples": max_samples, "max_ratio": max_update_ratio}

    def shared(self) -> dict[str, torch.Tensor]:
        """What the sampled sites receive (the model and the strategy's ``CONTROL`` arrays)."""
        return self.strategy.shared(self.current)

    def round(self, r: int, replies: dict[str, Update | str], sites: list[str] | None = None) -> dict:
        """Screens ``replies`` (per sampled site: its ``Update``, or why it has none), aggregates
        the usable updates into ``current`` and returns the round's record: ``loss``, ``sampled``,
        ``excluded``, ``bytes`` (for every site of ``sites``, default the sampled ones) and, with
        centroids, ``centroid_shift``. Fewer than ``min_clients`` usable updates raise
        ``TooFewUpdates`` and leave ``current`` as it was."""
        shared_now = self.shared()
        updates, excluded, losses = [], {}, {}
        for name, reply in replies.items():
            if isinstance(reply, Update):
                losses[name] = reply.metrics.get("loss")
                reason = check_update(reply, shared_now, **self.limits, noised=self.strategy.noised)
            else:
                reason = reply
            if reason:
                excluded[name] = reason
                print(f"round {r}: left out {reason}", file=sys.stderr)
            else:
                updates.append(reply)
        size = sum(v.numel() * v.element_size() for v in shared_now.values())
        record = {"loss": losses, "sampled": list(replies), "excluded": excluded,
                  "bytes": {name: {"down": size if name in replies else 0,
                                   "up": size if name in replies and name not in excluded else 0}
                            for name in (sites if sites is not None else replies)}}
        if self.strategy.privacy is not None:  # spent by the uploads, whatever the screening kept
            record["dp"] = self.strategy.privacy.record(r, len(shared_now[CENTROIDS]))
        if len(updates) < self.min_clients:
            raise TooFewUpdates(f"round {r}: only {len(updates)} usable client updates, fewer than "
                                f"fed.min_clients={self.min_clients}: {excluded}", record)
        before = self.current.get(CENTROIDS)
        self.current = self.strategy.aggregate(r, updates, self.current)
        if before is not None:
            record["centroid_shift"] = float((self.current[CENTROIDS].double() - before.double()).norm())
        record.update(self.strategy.round_notes())
        return record
