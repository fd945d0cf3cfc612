"""The ``sr2fhir`` subcommands other than ``serve``: ``convert``, ``check-config``, ``spool``.

Each is a function the CLI (:mod:`scp.cli`) imports only when its command runs, so
``sr2fhir convert`` loads the mapping and pydicom, not the network stack.
"""
