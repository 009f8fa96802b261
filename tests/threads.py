"""Running test code outside the test's transaction, as another client would."""

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection


def in_own_connection(work: Callable[[], Any], *, timeout: float = 60.0) -> Any:
    """Run ``work`` in a thread with its own, autocommitting database connection,
    so what it writes is committed (and visible to other connections and
    processes); returns its result and re-raises its exception."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout)
    if errors:
        raise errors[0]
    return result[0] if result else None


def own_backend_terminate() -> None:
    """End this connection from the server's side, as a PostgreSQL restart does:
    its next statement fails. Run it in ``in_own_connection``; the test's own
    transaction would die with it."""
    import psycopg

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    params = connection.get_connection_params()
    with psycopg.connect(
        host=params.get("host"),
        port=params.get("port"),
        user=params.get("user"),
        dbname=params["dbname"],
        autocommit=True,
    ) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
