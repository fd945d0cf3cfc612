"""Telemetry: what an operator sees of the daemon.

Owns structured logging (:mod:`.logs`), the Prometheus metrics shared across processes
(:mod:`.metrics`), the FHIR AuditEvent trail (:mod:`.audit`) and the HTTP health endpoint
(:mod:`.health`: ``/healthz``, ``/readyz``, ``/metrics``). Depends on :mod:`scp.config`,
:mod:`scp.spool` and :mod:`scp.delivery.reasons`.
"""
