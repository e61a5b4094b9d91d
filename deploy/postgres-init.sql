-- The three roles the service expects (README, Configuration; docs/operations.md, "Database roles"):
-- the schema owner (migrations, admin commands), the API's role, and the workers' role, a
-- member of the API's. None is a superuser or BYPASSRLS: the service refuses to start as one.
create role billing_owner login password 'billing_owner' nosuperuser nobypassrls;
create role billing_app login password 'billing_app' nosuperuser nobypassrls;
create role billing_worker login password 'billing_worker' nosuperuser nobypassrls in role billing_app;
create database billing owner billing_owner;
grant connect on database billing to billing_app, billing_worker;
