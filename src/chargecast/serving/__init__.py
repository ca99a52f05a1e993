"""The web service: the ASGI app, its protocol, limits and budget, metrics, logs, the supervisor."""
