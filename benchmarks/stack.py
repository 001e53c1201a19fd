"""A stack of a benchmark's own on loopback ports, leaving the developers' services alone: PostgreSQL and
Redis from bin/services with RUN_DIR (and media, index, static files) in a temporary directory, a
catalogue imported from the shared dataset, embedded and indexed, and gunicorn as bin/demo runs it,
per-client rate limits off (all the load comes from one address). `isolated_stack` stops and removes
all of it at the end, Ctrl-C included.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import requests
from common import DATASET, ROOT

# Settings that could point a child process at the developers' own services or files.
NOT_INHERITED = (
    "DATABASE_URL", "REDIS_URL", "CACHE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "FASHIONSITE_DATA_DIR",
    "DJANGO_MEDIA_ROOT", "DJANGO_STATIC_ROOT", "INDEX_DIR", "VISUAL_SEARCH_UPLOAD_DIR",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_command(command: list[str], env: dict) -> str:
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return result.stdout


class Stack:
    """PostgreSQL, Redis and gunicorn of this run only, with their data in `directory`."""

    def __init__(self, directory: Path):
        self.web: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = directory / "gunicorn.log"
        env = {name: value for name, value in os.environ.items() if name not in NOT_INHERITED}
        env |= {"RUN_DIR": str(directory), "PG_PORT": str(free_port()), "REDIS_PORT": str(free_port())}
        # bin/env.sh makes the database password and says where the cluster goes.
        database_url, pg_data = run_command(
            ["bash", "-c", 'source bin/env.sh && printf "%s\\n%s" "$DATABASE_URL" "$PG_DATA"'], env
        ).split("\n")
        if not Path(pg_data).is_relative_to(directory):
            raise RuntimeError(f"bin/env.sh puts the cluster in {pg_data}, outside {directory}; refusing to share it")
        self.env = env | {
            "DATABASE_URL": database_url,
            "REDIS_URL": f"redis://127.0.0.1:{env['REDIS_PORT']}/0",
            "FASHIONSITE_DATA_DIR": str(directory / "data"),
            "EMBEDDING_MODEL_DIR": str(ROOT / "var" / "models"),  # the converted weights, only read
            "DJANGO_STATIC_ROOT": str(directory / "static"),
            "DJANGO_DEBUG": "0",
            "DJANGO_HTTPS": "0",
            "DJANGO_SERVE_MEDIA": "1",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "VISUAL_SEARCH_RATE_LIMIT": "",
            "SIMILAR_API_RATE_LIMIT": "",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }

    def services(self, action: str, *names: str) -> None:
        run_command([str(ROOT / "bin" / "services"), action, *names], self.env)

    def manage(self, *args: str) -> str:
        return run_command([sys.executable, "manage.py", *args], self.env)

    def prepare(self, products: int) -> None:
        self.services("start")
        self.manage("migrate", "--noinput", "-v0")
        self.manage("import_catalog", str(DATASET), "--limit", str(products))
        self.manage("embed_catalog")
        self.manage("build_index")
        self.manage("collectstatic", "--noinput", "-v0")

    def start_web(self) -> None:
        with self.log_path.open("a") as log:
            self.web = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "fashionsite.wsgi", "--config", "fashionsite/gunicorn.conf.py",
                 "--bind", self.url.removeprefix("http://"), "--access-logfile", "/dev/null"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/api/recommender/status", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"gunicorn did not start:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.web:
            self.web.terminate()
            try:
                self.web.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.web.pid, signal.SIGKILL)
                self.web.wait()
        self.services("stop")


@contextmanager
def isolated_stack(products: int):
    directory = Path(tempfile.mkdtemp(prefix="soak-"))
    directory.chmod(0o711)  # the postgres account must reach its cluster below it
    stack = None
    try:
        stack = Stack(directory)
        stack.prepare(products)
        stack.start_web()
        yield stack
    finally:
        try:
            if stack:
                stack.stop()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
