"""Local stand-ins of providers, for tests."""
