"""PostgreSQL access: the connection pool, migrations and one module of queries per table group."""
