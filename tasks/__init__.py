"""Thin Prefect tasks: read through storage, call one unet function, write through storage."""
