"""Data tests run offline: every non-loopback connection fails, and the cache is private.

Loopback (127.0.0.1, ::1, localhost) and Unix sockets stay open so tests can run a
local HTTP server (e.g. for the download resume test).
"""

import socket

import pytest

_LOOPBACK = {"127.0.0.1", "::1", "localhost", "0:0:0:0:0:0:0:1"}


class NetworkBlocked(OSError):
    """Raised instead of opening a connection to anything but loopback."""


def _allowed(family, address) -> bool:
    if family == getattr(socket, "AF_UNIX", object()):
        return True
    host = address[0] if isinstance(address, tuple) else address
    return isinstance(host, str) and host in _LOOPBACK


@pytest.fixture(autouse=True)
def block_network(monkeypatch):
    """Makes ``socket.socket.connect`` and ``socket.create_connection`` refuse the network."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_create_connection = socket.create_connection

    def connect(self, address):
        if not _allowed(self.family, address):
            raise NetworkBlocked(f"network access blocked in tests: connect to {address!r}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if not _allowed(self.family, address):
            raise NetworkBlocked(f"network access blocked in tests: connect to {address!r}")
        return real_connect_ex(self, address)

    def create_connection(address, *args, **kwargs):
        if not _allowed(socket.AF_INET, address):
            raise NetworkBlocked(f"network access blocked in tests: connect to {address!r}")
        return real_create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", create_connection)


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path_factory):
    """Points ``$SSMJAX_DATA`` at a fresh temporary folder: tests never touch ~/.cache."""
    monkeypatch.setenv("SSMJAX_DATA", str(tmp_path_factory.mktemp("ssmjax_data")))
