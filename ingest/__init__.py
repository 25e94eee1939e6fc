"""The HTTP API: auth, action tokens, increments and batches into the stream."""
