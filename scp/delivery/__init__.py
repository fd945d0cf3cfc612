"""Delivery: take spooled SRs oldest first, map them, deliver them, settle them.

Owns the delivery targets (a FHIR server through :mod:`fhir_client`, or the outbox folder),
the forwarder loop, the dead-letter and hold reasons, the delivery of a Bundle as several
transactions with its progress kept in the spool (:mod:`.chunked`), the hold of the whole
queue while the FHIR endpoint itself is wrong (:mod:`.hold`), and the mapping of the backlog
ahead of its turn while delivery waits on an outage (:mod:`.prepared`). Depends on
:mod:`scp.spool`, :mod:`mapping` and :mod:`fhir_client`; it tells observers (metrics, audit) what happened through the
:class:`scp.delivery.forwarder.DeliveryObserver` protocol, without importing them. Public
names: :func:`scp.delivery.forwarder.run_forwarder`, :class:`~scp.delivery.forwarder.FhirDelivery`,
:class:`~scp.delivery.forwarder.OutboxDelivery`, :class:`~scp.delivery.hold.DeliveryHold`,
:data:`scp.delivery.reasons.DeadLetterReason`, :class:`~scp.delivery.reasons.HoldReason`.
"""
