"""Interactions: doctors document their interactions with a patient and the outcome."""
