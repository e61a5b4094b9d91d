"""Installed as the package billing._schemas (setup.py): the Avro schemas and the proto
files travel with the code, read through importlib.resources (billing/resources.py)."""
