"""What the tests share: SR builders and report fixtures, Bundle queries, the IG validator
wrapper, real peers' process fixtures (daemon, Orthanc), the DICOM wire client and the
fault-injecting HTTP proxy. Nothing here is a test."""
