"""The domain: incidents, statements, audiences, deliveries. Knows no transport and no SQL."""
