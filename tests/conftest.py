"""Test-wide settings: strict mode makes degraded paths and exceptions inside op rules fail tests."""
import os

os.environ.setdefault("AUTOCHUNK_STRICT", "1")
