"""Subcommands of the ``nacf`` command line (see ``nacf_core.cli``)."""
