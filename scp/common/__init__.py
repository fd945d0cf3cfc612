"""Small building blocks every part of :mod:`scp` shares; imports nothing else from :mod:`scp`.

:mod:`.files` (write a file atomically and durably), :mod:`.times` (ISO 8601 UTC timestamps,
clock and sleep types), :mod:`.waiting` (wait for a stop event or a timeout).
"""
