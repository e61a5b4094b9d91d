"""Recurring billing and subscription management for many tenants."""
