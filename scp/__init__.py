"""sr2fhir service: DICOM listener, durable spool, forwarder, configuration and CLI."""
