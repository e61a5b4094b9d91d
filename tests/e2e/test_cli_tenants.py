"""`billing tenants list` and `billing tenants rotate-key` (admin commands, as the schema
owner): the new key works over the API at once; the old one until --revoke-old."""
from __future__ import annotations

import uuid

from tests.e2e.test_cli_api import cli, ok, one_line
from tests.e2e.test_process import _env


async def test_list_and_rotate(migrated, service, tenant, new_tenant):
    env = _env(migrated, BILLING_API_ADDRESS=service.grpc.address)
    other = await new_tenant("other tenant")
    listed = {t["tenant_id"]: t for t in ok(await cli("tenants", "list", env=env))}
    assert listed[tenant.id]["live_keys"] == 1 and listed[other.id]["name"] == "other tenant"
    assert listed[tenant.id]["created_at"] <= listed[other.id]["created_at"]

    [kept] = ok(await cli("tenants", "rotate-key", tenant.id, env=env))
    assert kept["tenant_id"] == tenant.id and kept["api_key"].startswith("bk_") and kept["revoked"] == []
    for key in (tenant.api_key, kept["api_key"]):  # both live: clients move over first
        assert ok(await cli("plans", "list", "--api-key", key, env=env)) == []
    [rotated] = ok(await cli("tenants", "rotate-key", tenant.id, "--revoke-old", env=env))
    assert sorted(rotated["revoked"]) == sorted([tenant.api_key_id, kept["api_key_id"]])
    for key in (tenant.api_key, kept["api_key"]):
        line = one_line(await cli("plans", "list", "--api-key", key, env=env))
        assert line == "billing plans list: UNAUTHENTICATED: unknown or revoked API key (the key from --api-key)"
    assert ok(await cli("plans", "list", "--api-key", rotated["api_key"], env=env)) == []
    listed = {t["tenant_id"]: t for t in ok(await cli("tenants", "list", env=env))}
    assert listed[tenant.id]["live_keys"] == 1 and listed[other.id]["live_keys"] == 1  # the other tenant untouched


async def test_rotate_refuses_in_one_line(migrated):
    env = _env(migrated)
    missing = str(uuid.uuid4())
    assert one_line(await cli("tenants", "rotate-key", missing, env=env)) == \
        f"billing tenants rotate-key: no tenant {missing} (see `billing tenants list`)"
    assert one_line(await cli("tenants", "rotate-key", "acme", env=env)) == \
        "billing tenants rotate-key: tenant_id must be a UUID (see `billing tenants list`), got 'acme'"
