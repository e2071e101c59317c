"""The ``streamscore`` command line."""
