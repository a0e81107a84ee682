from fussfast.fed.flower import client_app as app

__all__ = ["app"]
