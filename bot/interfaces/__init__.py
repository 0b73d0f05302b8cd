"""Inbound interfaces: each parses, authorises, calls a domain service and answers."""
