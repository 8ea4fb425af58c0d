"""Medications: administration events over the message bus, and medication periods."""
