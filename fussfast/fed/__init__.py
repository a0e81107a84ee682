"""Federation: client updates and server strategies (the round loop and Flower adapter follow)."""

from fussfast.fed.strategy import FedAvg, FedCC, FedProx, Strategy, Update, check_update, make_strategy

__all__ = ["FedAvg", "FedCC", "FedProx", "Strategy", "Update", "check_update", "make_strategy"]
