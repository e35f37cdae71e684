"""The HTML report's wide tables fit the page (issue 23: "Best per budget" was cut at weight_decay
'1e' in a 1600-px window): headers wrap after underscores, numbers never break, and a table still
wider than the page scrolls in its own box."""

from __future__ import annotations

from tasks.report.render import render_html


def test_wide_table_headers_wrap_at_underscores_and_numbers_stay_whole():
    html = render_html("| Budget | weight_decay | learning_rate |\n|---|---|---|\n| 2M | 1e-05 | 0.001 |\n")
    assert "<th>weight_<wbr>decay</th>" in html and "<th>learning_<wbr>rate</th>" in html
    assert '<td class="num">1e-05</td>' in html
    css = html.split("<style>")[1].split("</style>")[0]
    assert "overflow-x: auto" in css and "td.num { text-align: right; white-space: nowrap;" in css
