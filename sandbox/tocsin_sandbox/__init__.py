"""Local stand-ins of providers, used by ``tocsin demo`` and the tests."""
