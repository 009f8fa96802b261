"""Django settings for type-checking herald_client.django with django-stubs'
mypy plugin (pyproject.toml [tool.django-stubs]); never used at run time."""

SECRET_KEY = "typecheck"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "herald_client.django",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
