#!/usr/bin/env python
"""Django's command-line utility; `herald` (installed with the project) is the same."""

from herald.cli import main

if __name__ == "__main__":
    main()
