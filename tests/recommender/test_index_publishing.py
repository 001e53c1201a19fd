"""Index versions published through the "indexes" storage reach every host; a bad one reaches none."""

import subprocess
import sys

import pytest

from recommender.encoding.backbones import get_backbone
from recommender.models import IndexVersion
from recommender.retrieval import build_index
from recommender.retrieval.publishing import IndexSync
from recommender.retrieval.reader import IndexReader
from recommender.retrieval.versions import INDEX_FILE, current_version, load_version
from recommender.tasks import rebuild_index
from tests.helpers import ROOT
from tests.processes import wait_until
from tests.recommender.test_index import _free_port, _status

LITE2 = get_backbone("efficientnet_lite2")
pytestmark = pytest.mark.django_db


@pytest.fixture
def other_host(settings, tmp_path):
    """Switches INDEX_DIR to another host's local cache (the storage and database stay shared)."""

    def switch(name: str):
        settings.INDEX_DIR = tmp_path / name
        return settings.INDEX_DIR

    return switch


def test_a_published_version_reaches_another_host(embedded_catalogue, other_host):
    published = build_index(LITE2).manifest.version
    assert IndexVersion.objects.current(LITE2.name).version == published

    cache = other_host("web-2")
    sync = IndexSync(LITE2)
    assert current_version(LITE2) is None
    assert sync.sync() == "switched"
    assert current_version(LITE2) == published
    assert load_version(cache / LITE2.name / "versions" / published, LITE2).manifest.items == 60
    assert sync.sync() == "up to date"

    other_host("worker")
    newer = build_index(LITE2, force=True).manifest.version
    other_host("web-2")
    assert sync.sync() == "switched" and current_version(LITE2) == newer


def test_a_version_that_fails_its_checksum_is_never_served(embedded_catalogue, other_host, index_store):
    good = build_index(LITE2).manifest.version
    cache = other_host("web-2")
    sync, reader = IndexSync(LITE2), IndexReader(LITE2)
    sync.sync()
    assert reader.get().manifest.version == good

    other_host("worker")
    bad = build_index(LITE2, force=True).manifest.version
    stored = index_store / LITE2.name / bad / INDEX_FILE
    stored.write_bytes(stored.read_bytes()[:-8] + b"tampered")
    other_host("web-2")

    assert sync.sync() == "refused"
    assert sync.sync() == "refused"  # not downloaded again
    assert current_version(LITE2) == good and reader.get().manifest.version == good
    assert sorted(path.name for path in (cache / LITE2.name / "versions").iterdir()) == [good]


def test_a_storage_outage_leaves_the_current_version_serving(embedded_catalogue, other_host, index_store, settings):
    first = build_index(LITE2).manifest.version
    other_host("web-2")
    sync, reader = IndexSync(LITE2), IndexReader(LITE2)
    sync.sync()
    other_host("worker")
    second = build_index(LITE2, force=True).manifest.version
    other_host("web-2")
    index_store.rename(index_store.with_name("store-away"))

    assert sync.sync() == "storage unreachable"
    assert reader.get().manifest.version == first

    index_store.with_name("store-away").rename(index_store)
    assert sync.sync() == "switched"
    assert reader.get().manifest.version == second


def test_a_database_outage_leaves_the_current_version_serving(embedded_catalogue, other_host, monkeypatch):
    first = build_index(LITE2).manifest.version
    other_host("web-2")
    sync = IndexSync(LITE2)
    sync.sync()

    def unreachable(space):
        raise ConnectionError("server closed the connection")

    monkeypatch.setattr(IndexVersion.objects, "current", unreachable)
    assert sync.sync() == "database unreachable"
    assert current_version(LITE2) == first


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_web_hosts_with_their_own_caches_switch_within_a_poll(
    embedded_catalogue, subprocess_env, celery_worker, tmp_path
):
    """Two gunicorn processes, each with its own INDEX_DIR, and a Celery worker (with a third) that
    builds and publishes: both web processes serve each new version within one poll interval."""
    poll_seconds = 1
    servers, ports = [], []
    try:
        celery_worker.start()
        rebuild_index.delay(force=True)
        first = wait_until(lambda: IndexVersion.objects.current(LITE2.name), 120, "a first published version").version
        for host in ("web-1", "web-2"):
            ports.append(_free_port())
            env = subprocess_env(INDEX_DIR=str(tmp_path / host), INDEX_SYNC_SECONDS=str(poll_seconds))
            command = [sys.executable, "-m", "gunicorn", "fashionsite.wsgi", "--bind", f"127.0.0.1:{ports[-1]}"]
            servers.append(
                subprocess.Popen(
                    [*command, "--workers", "1"],
                    cwd=ROOT,
                    env={**env, "WARM_UP_MODEL": "0"},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            wait_until(lambda port=port: _status(port), 30, f"web process on {port}")
            wait_until(lambda port=port: _status(port)["index_version"] == first, 10, f"{first} on {port}")

        rebuild_index.delay(force=True)
        newer = IndexVersion.objects.exclude(version=first).filter(space=LITE2.name)
        second = wait_until(newer.first, 120, "a second published version").version
        for host, port in zip(("web-1", "web-2"), ports):
            wait_until(lambda port=port: _status(port)["index_version"] == second, 10, f"{second} on {port}")
            assert (tmp_path / host / LITE2.name / "versions" / second).is_dir()
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)


@pytest.fixture
def s3_index_store(settings, tmp_path):
    """The "indexes" storage on S3 (django-storages), served here by moto's S3-compatible server."""
    import boto3

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    credentials = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
    try:
        client = boto3.client("s3", endpoint_url=endpoint, **credentials)
        wait_until(lambda: _bucket_created(client), 30, "moto's S3 server")
        options = {
            "bucket_name": "lookalike-indexes",
            "endpoint_url": endpoint,
            "access_key": "test",
            "secret_key": "test",
            "region_name": "us-east-1",
        }
        settings.STORAGES = {
            **settings.STORAGES,
            "indexes": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options},
        }
        yield client
    finally:
        server.terminate()
        server.wait(10)


def _bucket_created(client) -> bool:
    try:
        client.create_bucket(Bucket="lookalike-indexes")
        return True
    except Exception:  # the server is not listening yet
        return False


@pytest.mark.slow
def test_versions_published_to_s3_reach_another_host(embedded_catalogue, other_host, s3_index_store):
    published = build_index(LITE2).manifest.version
    keys = {item["Key"] for item in s3_index_store.list_objects_v2(Bucket="lookalike-indexes")["Contents"]}
    assert f"{LITE2.name}/{published}/{INDEX_FILE}" in keys and len(keys) == 6

    other_host("web-2")
    sync, reader = IndexSync(LITE2), IndexReader(LITE2)
    assert sync.sync() == "switched"
    assert reader.get().manifest.version == published
