"""Reporting: the clinical-trial documents store and the weekly PDF reports built on it."""
