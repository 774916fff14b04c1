"""The quantkit command line (installed as the ``quantkit_cli`` package)."""
