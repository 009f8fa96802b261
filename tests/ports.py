"""A free TCP port on 127.0.0.1, for the local servers tests start."""

import socket


def free_port() -> int:
    """A port nothing listens on now (the OS picks it); bind it soon after."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
