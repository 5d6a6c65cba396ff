"""Ports picked for servers stay theirs until they bind them (amelia_common.ports).

CI saw a port picked free (bind to 0, close) taken before its server bound it: the kernel gives
such ports to outgoing connections and to other binds of port 0. These tests show what a user
of `free_port` relies on: no connection can get the port, and no other process picking one
(another test session, another `amelia up`) gets the same one.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from amelia_common import ports
from amelia_common.ports import ephemeral_low, free_port, free_port_block, port_is_free


@pytest.fixture(autouse=True)
def own_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry of this test's own, so the host's (other sessions use it) is left alone."""
    path = tmp_path / "ports.json"
    monkeypatch.setattr(ports, "REGISTRY", path)
    return path


def test_a_port_is_never_one_the_kernel_gives_to_connections() -> None:
    picked = [free_port() for _ in range(20)]
    assert all(port < ephemeral_low() for port in picked)
    # Many outgoing connections (and binds of port 0) all get ports elsewhere.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        clients = [socket.create_connection(server.getsockname()) for _ in range(50)]
        try:
            assert not {c.getsockname()[1] for c in clients} & set(picked)
        finally:
            for client in clients:
                client.close()
    assert all(port_is_free(port) for port in picked)


def test_a_port_handed_out_is_not_handed_out_again_before_its_server_binds() -> None:
    first = free_port()
    second = free_port()
    # Nothing listens on `first` yet; it is still not given twice, and the ports after it
    # are left for its replicas (`amelia up --replicas` puts them there).
    assert second - first >= ports.STRIDE


def test_processes_picking_at_once_never_get_the_same_port(own_registry: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from amelia_common import ports; "
        "ports.REGISTRY = Path(sys.argv[1]); "
        "print(*(ports.free_port() for _ in range(25)))"
    )
    pickers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(own_registry)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    picked = [int(p) for picker in pickers for p in picker.communicate(timeout=120)[0].split()]
    assert all(picker.returncode == 0 for picker in pickers)
    assert len(picked) == 100
    assert len(set(picked)) == 100


def test_a_port_something_listens_on_is_skipped(own_registry: Path) -> None:
    taken = free_port()
    own_registry.unlink()  # forgotten by the registry (a host rebooted), yet listened on
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        assert taken not in [free_port() for _ in range(3)]


def test_a_cluster_block_is_free_at_each_offset() -> None:
    offsets = [0, 1, 2, 2000, 2001, 2002, 4000, 4001, 4002]
    first = free_port_block(offsets)
    again = free_port_block(offsets)
    assert all(port_is_free(first + offset) for offset in offsets)
    assert not {first + o for o in offsets} & {again + o for o in offsets}
    assert first + 4002 < ephemeral_low()


def test_a_torn_registry_is_started_afresh(own_registry: Path) -> None:
    own_registry.write_text('{"given": {"2000')  # a writer killed mid-write
    assert port_is_free(free_port())
