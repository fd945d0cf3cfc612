"""The service: the processes of ``sr2fhir serve`` and how they are supervised.

Owns the daemon (:mod:`.daemon`: listener in the main process, worker process, health
endpoint, signals), the worker process's wiring (:mod:`.worker`) and systemd integration
(:mod:`.systemd`: notify, watchdog, status). The top of the import graph: it composes
:mod:`scp.dicom`, :mod:`scp.delivery` and :mod:`scp.telemetry`.
"""
