"""Real servers and workers for the tests: a Redis server and Celery worker processes."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]


def wait_until(condition, timeout: float, message: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {message}")
        time.sleep(interval)


class RedisServer:
    def __init__(self, port: int, directory: Path):
        self.port, self.directory = port, directory
        self.process: subprocess.Popen | None = None
        self.client = redis.Redis(port=port, socket_connect_timeout=1)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        if self.ping():  # left over from an interrupted run
            self.client.shutdown(nosave=True)
            wait_until(lambda: not self.ping(), 10, "old Redis to stop")
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_until(self.ping, 10, f"Redis on port {self.port}")

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def flush(self) -> None:
        self.client.flushall()


class CeleryWorker:
    """`celery worker` in its own process group, logging to a file the caller can read
    (used by the tests and by benchmarks/worker_throughput.py)."""

    def __init__(
        self, env: dict[str, str], log_path: Path, queues: str = "embeddings,celery,training", concurrency: int = 1
    ):
        self.env, self.log_path, self.queues, self.concurrency = env, log_path, queues, concurrency
        self.process: subprocess.Popen | None = None

    def start(self, **extra_env: str) -> "CeleryWorker":
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "fashionsite",
                "worker",
                "-Q",
                self.queues,
                "-c",
                str(self.concurrency),
                "-l",
                "info",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"test-{uuid.uuid4().hex[:8]}@%h",
            ],
            cwd=ROOT,
            env={**self.env, **extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_for_log("ready.", 60)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[self.log_offset :] if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float) -> None:
        def seen():
            assert self.process.poll() is None, f"worker exited:\n{self.log()[-3000:]}"
            return text in self.log()

        wait_until(seen, timeout, f"{text!r} in the worker log:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children): no chance to clean up."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
