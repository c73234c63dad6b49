"""The science as plain functions on arrays and tensors; no Prefect, no direct file I/O."""
