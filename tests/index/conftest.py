"""Fixtures of tests/embed (the tiny random model) reused by the index tests."""

from tests.embed.conftest import tiny_opts, tiny_weights  # noqa: F401
