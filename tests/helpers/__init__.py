"""Helpers shared by several test files: plain functions and constants, imported by name.

Fixtures stay in the ``conftest.py`` files; what they share is here, so that no test module
imports from a conftest or from another test module.
"""
