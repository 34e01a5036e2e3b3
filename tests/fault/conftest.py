import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "fault: fault injection with real node processes (tests/fault)")
