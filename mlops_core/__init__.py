"""Contracts shared by every service: settings, errors, database and Redis schemas, stubs."""
