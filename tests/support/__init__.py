"""Helpers shared by the test packages (the only place tests import from besides the code under test)."""
