"""Federation: server strategies, clients, the server's round screening, the in-process round
loop and the checkpoint format."""

from fussfast.fed.server import Server, TooFewUpdates
from fussfast.fed.strategy import (STRATEGIES, FedAvg, FedCC, FedDyn, FedProx, Local, Moon, Scaffold, Strategy, Update,
                                   check_update, make_strategy, register, strategy_from_config)

__all__ = ["STRATEGIES", "FedAvg", "FedCC", "FedDyn", "FedProx", "Local", "Moon", "Scaffold", "Server", "Strategy",
           "TooFewUpdates", "Update", "check_update", "make_strategy", "register", "strategy_from_config"]
