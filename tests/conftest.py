"""Test session setup: real embedded PostgreSQL (+pgvector), Valkey and an MQTT broker.

They start here, before Django's settings are imported, so the settings see their addresses.
Set DATABASE_URL / REDIS_URL / MQTT_URL to run the suite against real services instead.
Each pytest process uses its own test database name, so parallel runs do not collide.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from accessctl.project import embedded
from tests.faces import dataset_require

ROOT = Path(__file__).resolve().parent.parent
TEST_VAR = Path(os.environ.get("ACCESSCTL_TEST_VAR_DIR", ROOT / "var" / "test"))
TEST_VAR.mkdir(parents=True, exist_ok=True)

_services: list[embedded.ChildService] = []
_tmp_var = Path(tempfile.mkdtemp(prefix="accessctl-test-var-"))

if not os.environ.get("DATABASE_URL"):
    _pg = embedded.start_postgres(TEST_VAR / "pg")
    os.environ["ACCESSCTL_DB_NAME"] = "postgres"
    os.environ["ACCESSCTL_PGDATA"] = str(_pg.pgdata)
if not os.environ.get("REDIS_URL"):
    # The password file settings would read with ACCESSCTL_VAR_DIR=_tmp_var (set below).
    _valkey_password = embedded.secret_file_ensure(_tmp_var / "valkey-password")
    _valkey = embedded.start_valkey(_tmp_var / "valkey", password=_valkey_password)
    _services.append(_valkey)
    os.environ["REDIS_URL"] = embedded.valkey_url(host=_valkey.host, port=_valkey.port, password=_valkey_password)
if not os.environ.get("MQTT_URL"):
    # It admits the server and the devices in the files under the settings' MQTT_AUTH_DIR
    # (written below and by the tests' provisioning) and a test-only observer (tests/broker_logins.py).
    _broker = embedded.start_mqtt_broker(
        _tmp_var / "mqtt", auth_dir=_tmp_var / "mqtt-auth", extra_identities_dir=_tmp_var / "mqtt-observer"
    )
    _services.append(_broker)
    os.environ["MQTT_URL"] = f"mqtt://127.0.0.1:{_broker.port}"
    from tests.broker_logins import OBSERVER_ENV, observer_identity_write

    os.environ[OBSERVER_ENV] = ":".join(observer_identity_write(_tmp_var / "mqtt-observer"))

os.environ["ACCESSCTL_TEST_DB_NAME"] = f"test_accessctl_{os.getpid()}"
os.environ["ACCESSCTL_VAR_DIR"] = str(_tmp_var)
os.environ["ACCESSCTL_MODELS_DIR"] = os.environ.get("ACCESSCTL_MODELS_DIR", str(ROOT / "var" / "models"))
os.environ["MQTT_CLIENT_ID"] = f"accessctl-bridge-test-{os.getpid()}"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "accessctl.project.settings")

import django  # noqa: E402

# pytest-django configures Django before this conftest is imported, when the settings module is
# not yet known; set it up here (pytest-django's fixtures then find it ready).
django.setup()

from devices.broker_auth import server_identity_write  # noqa: E402

server_identity_write()  # the bridge and the command publisher may log in (devices: as provisioned)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.dataset("lfw")``: skip when the data set is missing (fail under CI=true)."""
    for mark in item.iter_markers("dataset"):
        dataset_require(*mark.args)


def pytest_unconfigure(config: pytest.Config) -> None:
    for service in reversed(_services):
        service.stop()
    shutil.rmtree(_tmp_var, ignore_errors=True)


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment: None, django_db_blocker: object) -> object:
    """The test database, created and migrated by the owner role; tests (and child processes) then
    use the application's role, with the privileges it has in production (accessctl/project/dbroles.py)."""
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    name = settings.DATABASES["default"]["TEST"]["NAME"]
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        if settings.EMBEDDED_POSTGRES:
            _pg.drop_database(name)  # left by a crashed run of a process with the same pid
            _pg.ensure_database(name)
        else:
            owner = connections["owner"]
            with owner.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
            owner.close()
        for alias in ("default", "owner"):
            settings.DATABASES[alias]["NAME"] = name
            connections[alias].settings_dict["NAME"] = name
            connections[alias].close()
        call_command("migrate", database="owner", interactive=False, verbosity=0)
    yield
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        for conn in connections.all():
            conn.close()
        if settings.EMBEDDED_POSTGRES:
            _pg.drop_database(name)


@pytest.fixture(scope="session")
def test_env(django_db_setup: None) -> dict[str, str]:
    """Environment for child processes (Celery worker, bridge) that must share this test run's services."""
    from django.db import connection

    env = dict(os.environ)
    env["ACCESSCTL_DB_NAME"] = connection.settings_dict["NAME"]
    return env


@pytest.fixture
def media_root(settings: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Store uploaded and generated files in a per-test folder."""
    settings.MEDIA_ROOT = tmp_path / "media"  # type: ignore[attr-defined]
    return tmp_path / "media"


@pytest.fixture(autouse=True)
def _process_caches_cleared() -> None:
    """Per-process caches of configuration rows must not outlive a test's rolled-back data."""
    from accessctl.webhooks import SUBSCRIPTIONS
    from recognition.calibration import CALIBRATIONS
    from recognition.gallery_versions import gallery_removed_cache_clear
    from recognition.model_registry import active_model_cache_clear
    from recognition.shadow_sampling import shadow_caches_clear

    CALIBRATIONS.clear()
    SUBSCRIPTIONS.clear()
    active_model_cache_clear()
    shadow_caches_clear()
    gallery_removed_cache_clear()


@pytest.fixture(autouse=True)
def _model_registry_seeded(request: pytest.FixtureRequest) -> None:
    """A transactional test starts on tables the previous one flushed, the model registry's migrated
    rows included: register the shipped versions again, as the migration did (the active one from
    the settings), so the engine has its active model."""
    marker = request.node.get_closest_marker("django_db")
    transactional = bool(marker and marker.kwargs.get("transaction")) or bool(
        {"transactional_db", "live_server"} & set(request.fixturenames)
    )
    if not transactional:
        return
    request.getfixturevalue("transactional_db")
    from recognition.model_catalogue import builtin_models_register
    from recognition.models import ModelStateChange, ModelVersion

    if not ModelVersion.objects.exists():
        builtin_models_register(ModelVersion, ModelStateChange, using="default")


@pytest.fixture(autouse=True)
def _channel_layer_per_test() -> Iterator[None]:
    """Each test gets its own channel layer instance. A server process runs one event loop for its
    life; tests open a new loop per ``async_to_sync`` call, and a receive that a closed loop left
    pending keeps channels-redis's receive lock bound to that loop (the next test using the layer
    then fails with "bound to a different event loop")."""
    from channels.layers import channel_layers

    yield
    channel_layers.backends.clear()
