"""The worker process: the stream consumer beside arq's scheduled jobs."""
