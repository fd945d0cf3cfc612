"""The DICOM side: the C-STORE SCP that admits, checks and spools SR instances.

Owns association admission (AE titles, peer addresses, limits), the C-STORE handler that
makes each instance durable in the spool before answering, the Part 10 packing, DICOM TLS,
the association log, and pynetdicom's association threads woken by work (prompt_reactors).
Depends on :mod:`scp.spool` and :mod:`scp.config` only. Public entry points:
:func:`scp.dicom.listener.start_listener`, :func:`scp.dicom.tls.server_ssl_context`.
"""
