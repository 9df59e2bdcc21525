"""One module per section of the report; each has ``build(ctx) -> Section | None`` (see
:mod:`bench.report.context`). The page's order is the list in :mod:`bench.report.page`."""
