"""Every statement the service makes names the tenant of every tenant table it reads or changes
(docs/scaling.md): with `tenant_id` distributed on Citus, such a statement is routed to the one
node holding that tenant and no query joins rows of two tenants.

RLS already limits a session to its tenant; this check is about the text of the queries, so a
statement that would scan every tenant's shard (or join across them) fails here before it
reaches a distributed database. Read from the source with `ast`: every string literal in
`billing/` that is SQL, and the tenant tables named by the migrations.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Statements that legitimately span tenants, and why (each runs as the worker or the owner).
CROSS_TENANT = {
    "api_keys": "authentication finds the key by its hash before the tenant is known (reference table)",
}

_CREATE = re.compile(r"create table (?:if not exists )?(\w+)\s*\((.*?)\n\);", re.S | re.I)
_REFERENCE = re.compile(r"\b(?:from|join|update|delete\s+from)\s+(\w+)\b", re.I)
_SQL = re.compile(r"^\s*(?:with|select|update|delete)\b", re.I)


def tenant_tables() -> set[str]:
    tables: set[str] = set()
    for path in sorted((ROOT / "migrations").glob("*.sql")):
        for name, body in _CREATE.findall(path.read_text()):
            if re.search(r"^\s*tenant_id\b", body, re.M):
                tables.add(name.lower())
    return tables


def _text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def sql_statements() -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / "billing").rglob("*.py")):
        tree = ast.parse(path.read_text())
        parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            text = None if id(node) in parts else _text(node)
            if text and _SQL.match(text):
                found.append((f"{path.relative_to(ROOT)}:{node.lineno}", text))
    return found


def unscoped_references(sql: str, tables: set[str]) -> list[str]:
    """The tenant tables referenced in `sql` when the statement names `tenant_id` fewer times
    than it references tenant tables: each reference (a FROM, a JOIN, an UPDATE, a DELETE) needs
    its own tenant condition, in its WHERE or its ON."""
    refs = [m.group(1) for m in _REFERENCE.finditer(sql)
            if m.group(1).lower() in tables and m.group(1).lower() not in CROSS_TENANT]
    named = len(re.findall(r"\btenant_id\b", sql)) + len(re.findall(r"\bcurrent_tenant\(", sql))
    return refs if len(refs) > named else []


def test_the_migrations_name_the_tenant_tables():
    tables = tenant_tables()
    assert {"usage_events", "usage_totals", "subscriptions", "plans", "outbox", "billed_periods"} <= tables
    assert "tenants" not in tables


def test_the_check_finds_an_unscoped_statement():
    tables = {"usage_events", "subscriptions"}
    assert unscoped_references("select * from usage_events where subscription_id = $1", tables) == ["usage_events"]
    assert unscoped_references(
        "select * from subscriptions s join usage_events e on e.subscription_id = s.id where s.tenant_id = $1",
        tables) == ["subscriptions", "usage_events"]
    assert unscoped_references(
        "select * from subscriptions s join usage_events e on e.tenant_id = s.tenant_id and e.subscription_id = s.id"
        " where s.tenant_id = $1", tables) == []


def test_every_statement_names_the_tenant_of_each_tenant_table():
    tables = tenant_tables()
    statements = sql_statements()
    assert len(statements) > 50, "expected to find the service's SQL"
    wrong = [f"{where}: {', '.join(missing)}" for where, sql in statements
             if (missing := unscoped_references(sql, tables))]
    assert wrong == [], "statements that do not name the tenant of a tenant table:\n" + "\n".join(wrong)
