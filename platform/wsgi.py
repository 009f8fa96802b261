"""WSGI entry point: gunicorn serves the API and dashboard (faster than ASGI here)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")

application = get_wsgi_application()
