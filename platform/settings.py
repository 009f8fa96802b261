"""Herald settings: every value comes from the environment, with a safe default.

The variables are listed, with their defaults, in the README's configuration
table. With ``HERALD_ENV=production`` the process refuses to start on an unsafe
configuration (see ``herald.safety``).
"""

from pathlib import Path
from urllib.parse import unquote

import environ

from herald import safety
from herald.sentry import sentry_init

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

HERALD_ENV: str = env.str("HERALD_ENV", default="development")
if HERALD_ENV not in safety.ENVIRONMENTS:
    raise safety.UnsafeSettings(
        [f"HERALD_ENV must be one of {', '.join(safety.ENVIRONMENTS)}, not {HERALD_ENV!r}"]
    )
IS_PRODUCTION = HERALD_ENV == "production"

DEBUG: bool = env.bool("DEBUG", default=not IS_PRODUCTION)
SECRET_KEY: str = env.str("SECRET_KEY", default=safety.DEV_SECRET_KEY)
ALLOWED_HOSTS: list[str] = env.list(
    "ALLOWED_HOSTS",
    default=[] if IS_PRODUCTION else ["localhost", ".localhost", "127.0.0.1", "[::1]"],
)
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Fernet keys for provider secrets at rest. The first encrypts; all decrypt,
# so a key is rotated by putting the new one first.
HERALD_ENCRYPTION_KEYS: list[str] = env.list(
    "HERALD_ENCRYPTION_KEYS", default=[] if IS_PRODUCTION else [safety.DEV_ENCRYPTION_KEY]
)

HERALD_BASE_DOMAIN: str = env.str("HERALD_BASE_DOMAIN", default="localhost")
HERALD_DATA_DIR = Path(env.str("HERALD_DATA_DIR", default=str(BASE_DIR / ".herald")))

# How long a process trusts an API key it has looked up; revocation and
# suspension take effect within this many seconds everywhere.
HERALD_API_KEY_CACHE_SECONDS: float = env.float("HERALD_API_KEY_CACHE_SECONDS", default=3.0)
# last_used_at is written at most this often per key.
HERALD_API_KEY_TOUCH_SECONDS: float = env.float("HERALD_API_KEY_TOUCH_SECONDS", default=60.0)

# Tenant-supplied URLs (webhooks, chat, SMS gateways) may reach loopback only
# for local development sinks; production refuses to start with it on.
HERALD_ALLOW_LOOPBACK_URLS: bool = env.bool("HERALD_ALLOW_LOOPBACK_URLS", default=False)
# How much of a response to a tenant-supplied URL is read before it is cut.
HERALD_OUTBOUND_MAX_RESPONSE_BYTES: int = env.int(
    "HERALD_OUTBOUND_MAX_RESPONSE_BYTES", default=64 * 1024
)
# After a webhook endpoint's secret is rotated, the old one keeps signing (next
# to the new one) this long, so receivers can switch without rejecting anything.
HERALD_WEBHOOK_SECRET_OVERLAP_HOURS: int = env.int(
    "HERALD_WEBHOOK_SECRET_OVERLAP_HOURS", default=24
)
# An endpoint whose every delivery has failed for this long is disabled (and an
# endpoint.disabled callback tells the tenant's other endpoints).
HERALD_WEBHOOK_DISABLE_AFTER_DAYS: float = env.float(
    "HERALD_WEBHOOK_DISABLE_AFTER_DAYS", default=5.0
)
# A webhook endpoint that takes at least this long to answer (or times out) is
# served by the slow lane (the delivery_slow queue) for
# HERALD_WEBHOOK_SLOW_LANE_SECONDS, so it can not hold up the other endpoints.
HERALD_WEBHOOK_SLOW_SECONDS: float = env.float("HERALD_WEBHOOK_SLOW_SECONDS", default=2.0)
HERALD_WEBHOOK_SLOW_LANE_SECONDS: int = env.int("HERALD_WEBHOOK_SLOW_LANE_SECONDS", default=600)
# A webhook message owed to several endpoints is POSTed to this many at once.
HERALD_WEBHOOK_FANOUT_CONCURRENCY: int = env.int("HERALD_WEBHOOK_FANOUT_CONCURRENCY", default=8)
# Which endpoints subscribe to which status callbacks is cached this long per
# process (a change made in the same process is seen at once).
HERALD_CALLBACK_CACHE_SECONDS: float = env.float("HERALD_CALLBACK_CACHE_SECONDS", default=5.0)
# The contact in every tenant's VAPID claims (web push): push services write
# here about a misbehaving sender. A mailto: or https: URL.
HERALD_VAPID_CONTACT: str = env.str("HERALD_VAPID_CONTACT", default="mailto:ops@localhost")
# Where recipients' mail clients reach Herald: unsubscribe, open and click links.
HERALD_PUBLIC_URL: str = env.str("HERALD_PUBLIC_URL", default="http://localhost:8000")
# Bearer token of /metrics (Prometheus); empty turns the endpoint off.
HERALD_METRICS_TOKEN: str = env.str("HERALD_METRICS_TOKEN", default="")
# Where the staff dashboard links for errors (a Sentry project's issues page).
HERALD_SENTRY_URL: str = env.str("HERALD_SENTRY_URL", default="")

safety.refuse_unsafe_settings(
    herald_env=HERALD_ENV,
    debug=DEBUG,
    secret_key=SECRET_KEY,
    allowed_hosts=ALLOWED_HOSTS,
    encryption_keys=HERALD_ENCRYPTION_KEYS,
    api_key_cache_seconds=HERALD_API_KEY_CACHE_SECONDS,
    allow_loopback_urls=HERALD_ALLOW_LOOPBACK_URLS,
    metrics_token=HERALD_METRICS_TOKEN,
)

# --- Applications ------------------------------------------------------------

SHARED_APPS = [
    "django_tenants",
    "tenants",
    "unfold",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    # Serves Swagger UI's assets for /api/v1/docs locally instead of from a CDN.
    "ninja",
    "dashboard",
]
TENANT_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "rules_engine",
    "channels_delivery",
]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]

TENANT_MODEL = "tenants.Tenant"
# django-tenants sends SET search_path only when the schema changed since the
# last one it set on this connection (it forgets it on close and rollback), not
# before every cursor; tenants.middleware keeps the schema across requests.
TENANT_LIMIT_SET_CALLS = True
TENANT_DOMAIN_MODEL = "tenants.Domain"
PUBLIC_SCHEMA_NAME = "public"

MIDDLEWARE = [
    # Static files need no tenant: served before the tenant lookup.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "tenants.middleware.TenantResolutionMiddleware",
    "herald.middleware.ApiProblemMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "herald.urls_tenant"
PUBLIC_SCHEMA_URLCONF = "herald.urls_public"
API_URLCONF = "herald.urls_api"
WSGI_APPLICATION = "herald.wsgi.application"
ASGI_APPLICATION = "herald.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# --- Data stores ---------------------------------------------------------------

DATABASES = {
    "default": env.db_url("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/herald"),
}
DATABASES["default"]["ENGINE"] = "django_tenants.postgresql_backend"
# A Unix-socket directory arrives percent-encoded in the URL's host part.
DATABASES["default"]["HOST"] = unquote(str(DATABASES["default"].get("HOST", "")))
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
# Off by default: it costs a query per request. A connection that died is
# dropped after the request that hit the error, and the next one reconnects.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("DATABASE_CONN_HEALTH_CHECKS", default=False)
DATABASE_ROUTERS = ["django_tenants.routers.TenantSyncRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL: str = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_FUNCTION": "django_tenants.cache.make_key",
        "REVERSE_KEY_FUNCTION": "django_tenants.cache.reverse_key",
    },
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # redis-py 8 cuts every read at 5 s by default, exactly channels_redis'
        # blocking wait for a message: idle consumers would die with a TimeoutError.
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "socket_timeout": 10}],
            "prefix": "herald:ws",
        },
    },
}

# --- Celery (herald.celery reads the CELERY_* names) ---------------------------

CELERY_BROKER_URL: str = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Redis redelivers an unacknowledged task after this long; tasks here are
# short, and long waits live in PostgreSQL rows (DESIGN.md).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=120)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=150)
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "rules_engine.*": {"queue": "pipeline"},
    "channels_delivery.*": {"queue": "delivery"},
}
CELERY_TASK_TENANT_CACHE_SECONDS = 30
# Celery's Django fixup closes the database connection before and after every
# task unless this is set; reconnecting cost a delivery task more than its own
# work (bench/delivery.py). herald.celery closes connections that are too old
# or broken after each task instead, as Django does after each request.
CELERY_DB_REUSE_MAX = 1_000_000
# A task whose message was redelivered more often than this (its worker died
# every time) is failed instead of run again.
HERALD_TASK_MAX_DELIVERIES: int = env.int("HERALD_TASK_MAX_DELIVERIES", default=5)
CELERY_BEAT_SCHEDULE_FILENAME = str(HERALD_DATA_DIR / "celerybeat-schedule")

# --- Handing events to the pipeline (rules_engine.services.dispatch) ------------

# Each web process gathers committed events this long and publishes them
# together (0: publish each commit's events at once).
HERALD_PIPELINE_PUBLISH_MS: int = env.int("HERALD_PIPELINE_PUBLISH_MS", default=20)
# The sweeper publishes accepted events older than this (their publish was lost) ...
HERALD_DISPATCH_GRACE_SECONDS: int = env.int("HERALD_DISPATCH_GRACE_SECONDS", default=60)
# ... and queued events again when their publish is older than this (the broker
# lost the task, or the queue is that far behind); processing is idempotent.
HERALD_DISPATCH_REQUEUE_SECONDS: int = env.int("HERALD_DISPATCH_REQUEUE_SECONDS", default=600)

# --- Delivering messages (channels_delivery.services.delivery, .dispatch) --------

# A retry due sooner than this rides on a Celery countdown; a later one waits in
# its row for the sweeper (keep it far below the broker's visibility timeout).
HERALD_DELIVERY_COUNTDOWN_MAX_SECONDS: int = env.int(
    "HERALD_DELIVERY_COUNTDOWN_MAX_SECONDS", default=60
)
# The sweeper (every 15 s) publishes due queued messages untouched this long: a
# retry or a scheduled send whose time came, or a publish that was lost.
HERALD_DELIVERY_GRACE_SECONDS: int = env.int("HERALD_DELIVERY_GRACE_SECONDS", default=60)
# The waits before each retry of a retryable delivery failure, seconds,
# comma-separated (each jittered by 20 %); one more failure after the last and
# the message fails. Also bounds a message's attempts (one more than waits).
HERALD_DELIVERY_RETRY_SCHEDULE: tuple[float, ...] = safety.retry_schedule(
    env.list(
        "HERALD_DELIVERY_RETRY_SCHEDULE",
        default=["0", "5", "300", "1800", "7200", "18000", "36000", "36000"],
    )
)
# A message "sending" this long lost its worker; the sweeper queues it again.
# Must be above CELERY_TASK_TIME_LIMIT (checked below).
HERALD_DELIVERY_SENDING_TIMEOUT_SECONDS: int = env.int(
    "HERALD_DELIVERY_SENDING_TIMEOUT_SECONDS", default=600
)
safety.refuse_bad_task_timing(
    soft_time_limit=CELERY_TASK_SOFT_TIME_LIMIT,
    time_limit=CELERY_TASK_TIME_LIMIT,
    sending_timeout=HERALD_DELIVERY_SENDING_TIMEOUT_SECONDS,
    countdown_max=HERALD_DELIVERY_COUNTDOWN_MAX_SECONDS,
    visibility_timeout=CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"],
)

# --- CEL rule conditions (rules_engine.cel) --------------------------------------

# Longest condition accepted; checked before the parser sees it.
HERALD_CEL_MAX_LENGTH: int = env.int("HERALD_CEL_MAX_LENGTH", default=4096)
# Compiled programs kept per process, by (rule id, rule version).
HERALD_CEL_CACHE_SIZE: int = env.int("HERALD_CEL_CACHE_SIZE", default=4096)
# Conditions whose cost depends on the data (comprehensions, or a large event)
# run in a helper process that is killed after this long, with this much
# address space.
HERALD_CEL_TIMEOUT_MS: int = env.int("HERALD_CEL_TIMEOUT_MS", default=250)
HERALD_CEL_MEMORY_MB: int = env.int("HERALD_CEL_MEMORY_MB", default=1024)

# --- API -------------------------------------------------------------------------

# The same Idempotency-Key within this window replays the original response.
HERALD_IDEMPOTENCY_WINDOW_DAYS: int = env.int("HERALD_IDEMPOTENCY_WINDOW_DAYS", default=7)
HERALD_MAX_BODY_BYTES: int = env.int("HERALD_MAX_BODY_BYTES", default=512 * 1024)
# Batch and bulk endpoints take up to 1,000 items.
HERALD_MAX_BATCH_BODY_BYTES: int = env.int("HERALD_MAX_BATCH_BODY_BYTES", default=8 * 1024 * 1024)
HERALD_MAX_JSON_DEPTH: int = env.int("HERALD_MAX_JSON_DEPTH", default=32)
HERALD_MAX_BATCH_ITEMS = 1000
# How long a process trusts its copy of a tenant's event types (and schemas).
HERALD_EVENT_TYPE_CACHE_SECONDS: float = env.float("HERALD_EVENT_TYPE_CACHE_SECONDS", default=5.0)
# Django refuses larger bodies outright; the per-endpoint caps above are smaller.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(HERALD_MAX_BODY_BYTES, HERALD_MAX_BATCH_BODY_BYTES)

# --- Templates -------------------------------------------------------------------

# One render of one template field may take this long in a worker before it fails.
HERALD_TEMPLATE_RENDER_TIMEOUT_MS: int = env.int("HERALD_TEMPLATE_RENDER_TIMEOUT_MS", default=200)
# Longest template source (characters) accepted when a template is saved.
HERALD_TEMPLATE_MAX_SOURCE_LENGTH: int = env.int(
    "HERALD_TEMPLATE_MAX_SOURCE_LENGTH", default=100 * 1024
)

# --- HTTP ------------------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(HERALD_DATA_DIR / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if IS_PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Outside production, static files are served straight from the apps.
WHITENOISE_USE_FINDERS = not IS_PRODUCTION
WHITENOISE_AUTOREFRESH = DEBUG

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=IS_PRODUCTION)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=IS_PRODUCTION)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Per-tenant API rate limit (herald.limits): a token bucket in Redis refilled at
# the plan's api_requests_per_second and holding that many seconds of requests.
HERALD_RATE_LIMIT_ENABLED: bool = env.bool("HERALD_RATE_LIMIT_ENABLED", default=True)
HERALD_RATE_LIMIT_BURST_SECONDS: float = env.float("HERALD_RATE_LIMIT_BURST_SECONDS", default=2.0)
# The rate of a tenant that has no plan.
HERALD_RATE_LIMIT_DEFAULT_PER_SECOND: int = env.int(
    "HERALD_RATE_LIMIT_DEFAULT_PER_SECOND", default=20
)
# Failed API key lookups (missing, malformed, unknown) one client address may
# make per minute before its keys are no longer looked up; 0 turns it off.
HERALD_API_KEY_FAILURES_PER_MINUTE: int = env.int("HERALD_API_KEY_FAILURES_PER_MINUTE", default=30)
# Reverse proxies whose X-Forwarded-For is believed: addresses or CIDR ranges,
# comma-separated. Behind them a client is the right-most address they did not
# add (herald.limits.client_address); empty: the TCP peer is the client, and
# every client behind a proxy shares its failed-key budget. docker/compose.yaml
# trusts the private ranges, where Caddy is the peer.
HERALD_TRUSTED_PROXIES: list[str] = env.list("HERALD_TRUSTED_PROXIES", default=[])
safety.refuse_bad_trusted_proxies(HERALD_TRUSTED_PROXIES, herald_env=HERALD_ENV)
# The limiter and the event quota fail open: a Redis slower than this is skipped.
HERALD_LIMITS_REDIS_TIMEOUT_SECONDS: float = env.float(
    "HERALD_LIMITS_REDIS_TIMEOUT_SECONDS", default=0.25
)

# --- Dashboard -------------------------------------------------------------------

UNFOLD = {
    "SITE_TITLE": "dashboard.sites.site_header",
    "SITE_HEADER": "dashboard.sites.site_header",
    "SITE_SUBHEADER": "dashboard.sites.site_subheader",
    "SITE_SYMBOL": "campaign",
    "SHOW_HISTORY": True,
    "SIDEBAR": {
        "show_search": True,
        "show_all_applications": False,
        "navigation": "dashboard.navigation.sidebar",
    },
}

# --- Logging and error reporting ------------------------------------------------

LOG_LEVEL: str = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # One INFO line per outbound request; every attempt is a DeliveryAttempt row already.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}

SENTRY_DSN: str = env.str("SENTRY_DSN", default="")
if SENTRY_DSN:
    sentry_init(
        dsn=SENTRY_DSN,
        environment=env.str("SENTRY_ENVIRONMENT", default=HERALD_ENV),
        traces_sample_rate=env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0),
    )

CELERY_BEAT_SCHEDULE = {
    "worker-heartbeat": {"task": "herald.worker_heartbeat", "schedule": 30.0},
    "events-sweep": {"task": "rules_engine.events_sweep_all", "schedule": 15.0},
    "digests-flush": {"task": "rules_engine.digests_flush_all", "schedule": 15.0},
    "messages-sweep": {"task": "channels_delivery.messages_sweep_all", "schedule": 15.0},
    "stats-fold": {"task": "channels_delivery.stats_fold_all", "schedule": 10.0},
}
