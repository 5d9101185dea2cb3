"""Watching the service: outcomes counted once, figures read from Redis, their export.

outcomes  records how jobs end (hooks, cancel and recovery all go through it)
figures   reads queue, worker, outcome and duration figures back from Redis
prometheus  exports the figures to Prometheus at every scrape
"""
