"""Delivery: take spooled SRs oldest first, map them, deliver them, settle them.

Owns the delivery targets (a FHIR server through :mod:`fhir_client`, or the outbox folder),
the forwarder loop and the dead-letter reasons. Depends on :mod:`scp.spool`, :mod:`mapping`
and :mod:`fhir_client`; it tells observers (metrics, audit) what happened through the
:class:`scp.delivery.forwarder.DeliveryObserver` protocol, without importing them. Public
names: :func:`scp.delivery.forwarder.run_forwarder`, :class:`~scp.delivery.forwarder.FhirDelivery`,
:class:`~scp.delivery.forwarder.OutboxDelivery`, :data:`scp.delivery.reasons.DeadLetterReason`.
"""
