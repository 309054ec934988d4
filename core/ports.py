"""Free loopback ports for the workers that tests and benchmarks start, and a check that one listens.

A port from ``bind(0)`` lies in the kernel's ephemeral range, where outgoing connections (every
Kafka and Redis client) take their local ports too: between picking it and a worker binding it, a
client can take it (CI saw a Faust web server fail with EADDRINUSE). Ports are drawn below that
range instead, and never handed out twice by one process.

>>> a, b = free_port(), free_port()
>>> a != b and all(LOW <= port < HIGH for port in (a, b))
True
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20_000, 32_000  # below Linux's default ephemeral range (32768-60999)
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randrange(LOW, HIGH)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise OSError(f"no free port on {host} in {LOW}-{HIGH - 1}")


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
