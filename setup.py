"""Only what pyproject.toml cannot say: schemas/ and migrations/ stay at the top of the
repository (where operators and reviewers look for them) and ship inside the wheel as the
packages billing._schemas and billing._migrations, read through importlib.resources
(billing/resources.py). The mapping serves the editable install too: setuptools' editable
finder maps those package names to the two directories."""
from setuptools import find_namespace_packages, find_packages, setup

MAPPED = {"billing._schemas": "schemas", "billing._migrations": "migrations"}
# The data directories below them (schemas/avro/history, schemas/proto/...) are packages
# of data only; listed so setuptools ships them rather than warn that it would not.
DATA_PACKAGES = [f"{package}.{sub}" for package, directory in MAPPED.items()
                 for sub in find_namespace_packages(where=directory)]

setup(
    packages=find_packages(include=["billing", "billing.*", "consumers", "consumers.*", "producers", "producers.*"])
    + list(MAPPED) + DATA_PACKAGES,
    package_dir=MAPPED,
    package_data={
        "billing": ["py.typed"],
        "billing._migrations": ["*.sql"],
        **{package: ["*.avsc", "*.proto"] for package in DATA_PACKAGES},
    },
)
