-- The two roles the service expects (see README, Configuration).
create role billing_owner login password 'billing_owner' nosuperuser nobypassrls;
create role billing_app login password 'billing_app' nosuperuser nobypassrls;
create database billing owner billing_owner;
grant connect on database billing to billing_app;
