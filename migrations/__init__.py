"""Installed as the package billing._migrations (setup.py): the numbered SQL migrations
travel with the code, read through importlib.resources (billing/resources.py)."""
