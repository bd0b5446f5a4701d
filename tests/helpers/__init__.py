"""Helpers that test modules import: file builders, a load worker, mutations. No tests here."""
