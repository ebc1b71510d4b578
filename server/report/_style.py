"""The styles of spikewatch's HTML pages (the report and run page, the run index), inline in each
page so that nothing is loaded from elsewhere."""

from __future__ import annotations

from typing import Final

STYLE: Final = """
body{margin:0;background:#f4f5f7;color:#1d1d1f;
 font:14px/1.45 system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:18px 20px 40px}
h1{font-size:24px;margin:4px 0 2px}h2{font-size:17px;margin:26px 0 8px}
.sub{color:#555;margin:0 0 12px}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #dcdfe4;border-radius:8px;padding:8px 14px;min-width:130px}
.card b{display:block;font-size:20px}.card span{color:#555;font-size:12px}
.card.bad b{color:#c62828}
table{border-collapse:collapse;background:#fff;border:1px solid #dcdfe4;width:100%}
th,td{padding:5px 10px;border-bottom:1px solid #eceef1;text-align:left;vertical-align:top}
th{background:#f0f1f4;font-weight:600;font-size:13px}td.num{text-align:right;
 font-variant-numeric:tabular-nums}
table.meta{width:auto;min-width:50%}table.meta th{width:180px}
.sev{display:inline-block;padding:0 8px;border-radius:10px;color:#fff;font-size:12px;
 font-weight:600}
figure{margin:0 0 10px;background:#fff;border:1px solid #dcdfe4;border-radius:8px;
 padding:4px 6px;overflow-x:auto}
svg.chart{display:block;width:100%;height:auto}
.phases span{display:inline-block;margin-right:12px}
.phases i{display:inline-block;width:14px;height:12px;border:1px solid #aaa;margin-right:4px;
 vertical-align:-1px}
.note{color:#555;font-style:italic}
details{margin:8px 0}summary{cursor:pointer;color:#333}
#cursor-label{position:fixed;display:none;background:#222;color:#fff;padding:2px 7px;
 border-radius:4px;font-size:12px;pointer-events:none}
img#report-png{max-width:100%;border:1px solid #dcdfe4;background:#fff}
nav{margin:0 0 6px;font-size:13px}nav a{margin-right:14px}
"""
