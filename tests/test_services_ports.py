"""The port picker the tests and `cizo up` use: no port twice, none a client could take."""
from __future__ import annotations

import socket

import pytest

from cizo import services


def test_free_port_never_repeats_and_avoids_the_ephemeral_range() -> None:
    low, high = services._ephemeral_range()
    ports = [services.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(not (low <= p <= high) for p in ports)
    assert all(services.port_is_free(p) for p in ports)


class _Scripted:
    """Offers the given ports in order, as the random choice would."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports

    def choice(self, _candidates: range) -> int:
        return self.ports.pop(0)


def test_free_port_skips_a_port_someone_listens_on(monkeypatch: pytest.MonkeyPatch) -> None:
    candidates = services._listen_range()
    unused = (p for p in candidates[1234:]
              if services.port_is_free(p) and p not in services._handed_out)
    taken, spare = next(unused), next(unused)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", taken))
        s.listen()
        monkeypatch.setattr(services, "_rng", _Scripted([taken, spare]))
        assert services.free_port() == spare
