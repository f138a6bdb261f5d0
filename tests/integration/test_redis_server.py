"""The redis-server fixture starts a real server on a free loopback port and stops it cleanly."""

from __future__ import annotations

import socket

from tests.support.redis import RedisServer


def resp(port: int, *words: str) -> bytes:
    """Send one command in RESP and return the raw reply."""
    payload = f"*{len(words)}\r\n".encode() + b"".join(
        f"${len(w.encode())}\r\n{w}\r\n".encode() for w in words
    )
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(payload)
        return s.recv(4096)


def test_redis_server_answers_and_stores(redis_server: RedisServer) -> None:
    assert redis_server.url.startswith("redis://127.0.0.1:")
    assert resp(redis_server.port, "SET", "greeting", "bonjour") == b"+OK\r\n"
    assert resp(redis_server.port, "GET", "greeting") == b"$7\r\nbonjour\r\n"
    version = resp(redis_server.port, "INFO", "server")
    assert b"redis_version:" in version


def test_redis_server_stops_and_restarts_on_the_same_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    redis_server.stop()
    assert not redis_server.ping()
    redis_server.start()
    assert redis_server.port == port
    assert redis_server.ping()
