"""Tests may talk to loopback and Unix sockets only: anything else fails the test."""

from __future__ import annotations

import socket

import pytest
from pytest_socket import SocketConnectBlockedError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("address", ["10.255.255.1", "169.254.169.254", "192.0.2.1"])
def test_a_connection_off_loopback_is_refused_before_any_packet(address: str) -> None:
    with (
        socket.socket() as s,
        pytest.raises(SocketConnectBlockedError),
        pytest.warns(UserWarning, match=f"socket.connect.. with host .{address}"),
    ):
        s.connect((address, 80))


def test_loopback_is_allowed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        socket.create_connection(server.getsockname()[:2], timeout=5).close()
