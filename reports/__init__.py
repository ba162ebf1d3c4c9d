"""Self-contained HTML pages over the store: one page builder, one page per question.

* :mod:`reports.htmlpage` — the shared page builder (tables, inline PNG plots, audio tags, atomic write);
* :mod:`reports.data_memo` — the data memo behind ``python -m pipelines.report``;
* :mod:`reports.error_page` — the error-analysis page of a head behind ``python -m pipelines.errors``.
"""
