"""Shared pytest configuration: the kit's fixtures (fttestkit.plugin), for every tier."""

pytest_plugins = ["fttestkit.plugin"]
