"""The shared leaves: what a results folder is and where its facts live.

Every other package of ``bench`` reads and writes results through these modules, and they import none of
those packages: :mod:`.schema` (the grid's fields, the CSV columns, cell ids, the folder's file names),
:mod:`.store` (atomic, checksummed records; what is done and what is stale), :mod:`.tables` (the CSVs
rebuilt from the records), :mod:`.provenance` (commit, machine, versions, the lock), :mod:`.errors` (the
one-line bad-input errors), :mod:`.taskdata` (the MNIST a task reads) and :mod:`.peakmem` (peak memory of
one step, shared by the timing probe and the regression gate).
"""
