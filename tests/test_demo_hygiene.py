"""bin/services gives the app an ordinary database role behind a password, and keeps the secrets private."""

import os
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

PSQL = Path("/usr/lib/postgresql/15/bin/psql")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="bin/services runs PostgreSQL as the postgres user, which needs root"),
    pytest.mark.skipif(not PSQL.parent.joinpath("initdb").exists(), reason="PostgreSQL 15 is not installed"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_services_keep_the_database_and_secrets_private():
    with tempfile.TemporaryDirectory() as run_dir:
        os.chmod(run_dir, 0o755)  # the postgres user must reach the cluster inside
        env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "PGPASSWORD")}
        env.update(RUN_DIR=run_dir, PG_PORT=str(free_port()), REDIS_PORT=str(free_port()), PGPASSFILE=os.devnull)

        def bash(script: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                ["bash", "-c", f"source bin/env.sh && {script}"], cwd=ROOT, env=env, capture_output=True, text=True
            )

        if not bash('echo "$PG_DATA"').stdout.startswith(run_dir):
            pytest.skip("the postgres user cannot reach this checkout, so the cluster would not live in RUN_DIR")
        try:
            subprocess.run([ROOT / "bin" / "services", "start"], env=env, check=True, capture_output=True)
            password_file = Path(run_dir, "db_password")
            assert mode(password_file) == 0o600
            database_url = bash('echo "$DATABASE_URL"').stdout.strip()
            assert f"fashionsite:{password_file.read_text().strip()}@" in database_url

            tcp = ["-h", "127.0.0.1", "-p", env["PG_PORT"], "-U", "fashionsite", "-d", "fashionsite", "-w"]
            refused = subprocess.run([PSQL, *tcp, "-c", "SELECT 1"], env=env, capture_output=True, text=True)
            assert refused.returncode != 0 and "password" in refused.stderr
            role = "SELECT rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user"
            query = [PSQL, database_url, "-tAc", role]
            assert subprocess.run(query, env=env, capture_output=True, text=True, check=True).stdout.strip() == "f|t"

            # The demo's secrets, the way bin/demo writes them; an old world-readable one is tightened.
            Path(run_dir, "admin_password").write_text("old\n")
            demo = 'ensure_secret "$RUN_DIR/secret_key" 50 && ensure_secret "$RUN_DIR/admin_password" 12'
            bash(demo).check_returncode()
            assert mode(Path(run_dir, "secret_key")) == mode(Path(run_dir, "admin_password")) == 0o600
        finally:
            subprocess.run([ROOT / "bin" / "services", "stop"], env=env, capture_output=True)
