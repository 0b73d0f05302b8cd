"""The delivery engine: workers claim due deliveries from the store, send, and record."""
