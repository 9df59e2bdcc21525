"""The statistics the report draws its conclusions from, as functions of data frames.

:mod:`.diagnostics` ranks estimators by their gradient error against the exact gradient and by their
work-normalised error; :mod:`.paired` pairs cells by seed (paired differences with their t-intervals,
accuracy at equal wall time, the setting that does not learn) and :mod:`.paired_verdicts` turns those
intervals into better / non-inferior / inconclusive / worse. Imports :mod:`bench.core` only: no plotting,
no files written.
"""
