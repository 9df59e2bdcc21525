"""``python -m bench report RESULTS_DIR``: tables, plots and a self-contained HTML report.

The report is a pure function of the results folder (plus any ``--compare-timing`` folders, whose
``timing.csv`` is shown beside this folder's so CPU and GPU step times can be read side by side, and the
paired verdict's ``--margin`` and level, stated on the page).
It writes into RESULTS_DIR:

* ``tables/*.csv`` (numbers) and ``tables/*.md`` (formatted, one provenance line each);
* ``plots/*.png`` (seaborn; colours by estimator family, aux shown by line style and marker; the
  provenance line inside each image);
* ``tables/summary.md`` (the summary the README quotes) and ``tables/run_cost.md``;
* ``report.md`` and ``report.html`` (plots inline as base64 PNG, table of contents, anchors, sortable
  tables; opens from disk).

Tables are byte-identical when the report is run twice on the same folder: nothing in them depends on
the clock; the date shown is the one the harness wrote into ``env.json``. PNGs are saved without
matplotlib's version/date metadata, so the plots and report.html are reproducible too.

The same package holds what else is drawn from results folders: ``compare`` of two folders
(:mod:`.compare`, :mod:`.compare_render`, :mod:`.compare_cli`), the tuning study behind ``tune``
(:mod:`.tune_study`, its plot in :mod:`.tune_plots`) and the README's generated blocks (:mod:`.readme`).

Layout (no module imports one that imports it back):

* :mod:`.data`: :func:`load_results` (tolerant reading: corrupt or missing files become "corrupt" /
  "missing" cells, never a crash) -> :class:`Results`;
* :mod:`.common`: variant names and order, colours by family, provenance, number formats;
* :mod:`.frames`: frames several sections read (Table 1 long form, statuses, gradient variance, timing);
* :mod:`.context`: :class:`Section`, :class:`Table`, :class:`Figure`, :class:`Context`;
* :mod:`.sections`: one module per section, each ``build(ctx) -> Section``;
* :mod:`.page`: the list of sections and :func:`build_report`; :mod:`.render` and ``templates/``: the
  Markdown and HTML pages (Jinja2); :mod:`.cli`: the ``report`` command.

CPU and GPU side by side: run the same preset on each device and name the other folders::

    python -m bench report results/quick-cpu --compare-timing results/quick-cuda

Only ``timing.csv`` is taken from the other folders; nothing is read implicitly, so the report stays a
function of its arguments.
"""
from .cli import add_report_parser, cmd_report, main
from .common import estimator_order, palette, provenance, rank_label_counts, variant_label, variants
from .data import Results, load_results, parse_cell
from .page import SECTIONS, build_report
from .sections.anchors import load_anchors

__all__ = ["Results", "SECTIONS", "add_report_parser", "build_report", "cmd_report", "estimator_order",
           "load_anchors", "load_results", "main", "palette", "parse_cell", "provenance", "rank_label_counts",
           "variant_label", "variants"]
