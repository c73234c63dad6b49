"""Prefect flows composing the tasks, and the ``emseg`` command line."""
