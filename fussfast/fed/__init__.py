"""Federation: clients, server strategies, the in-process round loop and its checkpoints."""

from fussfast.fed.strategy import (STRATEGIES, FedAvg, FedCC, FedProx, Local, Moon, Strategy, Update, check_update,
                                   make_strategy)

__all__ = ["STRATEGIES", "FedAvg", "FedCC", "FedProx", "Local", "Moon", "Strategy", "Update", "check_update",
           "make_strategy"]
