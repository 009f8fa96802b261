"""Settings of the example shop: a tenant's own Django application, not Herald.

Everything comes from the environment: ``HERALD_URL`` and ``HERALD_API_KEY``
(the bridge's two settings), ``SHOP_DATABASE`` (an SQLite file), and for
anything beyond a laptop ``SHOP_SECRET_KEY`` with ``SHOP_DEBUG=false``.
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DEV_SECRET_KEY = "example-shop-not-secret"  # noqa: S105 -- refused below unless SHOP_DEBUG

DEBUG = os.environ.get("SHOP_DEBUG", "true").lower() in {"1", "true", "yes"}
SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", DEV_SECRET_KEY)
if not DEBUG and SECRET_KEY == DEV_SECRET_KEY:
    raise ImproperlyConfigured("SHOP_SECRET_KEY must be set when SHOP_DEBUG is false")
ALLOWED_HOSTS = os.environ.get("SHOP_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "herald_client.django",  # the bridge: its outbox table and signals
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DATABASE", str(BASE_DIR / "shop.sqlite3")),
        # One transaction a request: an order and its outbox row commit together.
        "ATOMIC_REQUESTS": True,
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
STATIC_URL = "static/"

# The bridge (herald_client.django): where Herald is, and a key with events:write.
HERALD_URL = os.environ.get("HERALD_URL", "http://127.0.0.1:8000")
HERALD_API_KEY = os.environ.get("HERALD_API_KEY", "")
HERALD_OUTBOX_MAX_DELAY = float(os.environ.get("HERALD_OUTBOX_MAX_DELAY", "300"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"herald_client": {"handlers": ["console"], "level": "INFO"}},
}
