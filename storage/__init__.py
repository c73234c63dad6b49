"""All file I/O of emseg: TIFF stacks, OME-Zarr volumes, training sets, done-ledgers.

Never imports Prefect or torch: it runs on a bare GPU machine (a test checks this).
"""
