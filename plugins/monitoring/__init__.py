"""Monitoring: ingest the hospital's PMS and LIS files; the worklist of patients admitted for
more than 48 hours without a new lab test."""
