"""EHR: patient questionnaires mapped into each organization's EHR system, delivered reliably.

See ``docs/ehr.md``.
"""
