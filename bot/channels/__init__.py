"""Outbound channel adapters: one module per provider, each implementing ``bot.ports.Channel``."""
