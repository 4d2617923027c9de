#!/usr/bin/env python3
"""SVG line chart of writes/s against connections, one line per system, from bench-vs-etcd's results.csv.

Usage: scripts/chart.py RESULTS.csv OUT.svg [--title TEXT]

Reads the rows whose label is write-c<N> (the `nimbus bench` write sweep; wrk cross-check rows are left
out), plots ops_per_sec against connections on a log2 x axis, and writes a self-contained SVG (no scripts,
no external fonts). Python 3 standard library only.
"""
import csv
import math
import sys
import textwrap
from xml.sax.saxutils import escape

COLORS = {"nimbus": "#1f77b4", "etcd": "#d62728"}
OTHER = ["#2ca02c", "#9467bd", "#8c564b"]
W, H = 720, 420
LEFT, RIGHT, BOTTOM = 80, 150, 60


def nice_step(span, ticks=6):
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def fmt(v):
    if v >= 1000:
        return "{:,.0f}k".format(v / 1000) if v % 1000 == 0 else "{:,.1f}k".format(v / 1000)
    return "{:g}".format(v)


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    src, out = argv[1], argv[2]
    title = "Writes/s vs connections"
    if "--title" in argv:
        title = argv[argv.index("--title") + 1]
    series = {}
    with open(src, newline="") as f:
        for r in csv.DictReader(f):
            if not r["label"].startswith("write-c"):
                continue
            series.setdefault(r["system"], []).append((int(r["connections"]), float(r["ops_per_sec"])))
    if not series:
        sys.exit("chart.py: no write-c<N> rows in " + src)
    for pts in series.values():
        pts.sort()
    xs = sorted({x for pts in series.values() for x, _ in pts})
    ymax = max(y for pts in series.values() for _, y in pts) or 1.0
    step = nice_step(ymax * 1.05)
    ytop = step * math.ceil(ymax * 1.05 / step)
    # A long title wraps (about 9.5 px per character at 15 px bold, to be safe) and pushes the plot down.
    title_lines = textwrap.wrap(title, width=int((W - 40) / 9.5)) or [""]
    TOP = 30 + 20 * len(title_lines)
    lx0, lx1 = math.log2(xs[0]), math.log2(xs[-1])
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x):
        if lx1 == lx0:
            return LEFT + pw / 2
        return LEFT + (math.log2(x) - lx0) / (lx1 - lx0) * pw

    def py(y):
        return TOP + ph - y / ytop * ph

    o = []
    o.append('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
             'font-family="sans-serif" font-size="12">' % (W, H, W, H))
    o.append('<rect width="100%" height="100%" fill="white"/>')
    for i, line in enumerate(title_lines):
        o.append('<text x="20" y="%d" font-size="15" font-weight="bold">%s</text>' % (26 + 20 * i, escape(line)))
    # Grid and y axis labels.
    y = 0.0
    while y <= ytop + 1e-9:
        o.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>' % (LEFT, py(y), LEFT + pw, py(y)))
        o.append('<text x="%.1f" y="%.1f" text-anchor="end">%s</text>' % (LEFT - 8, py(y) + 4, fmt(y)))
        y += step
    for x in xs:
        o.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>' % (px(x), TOP, px(x), TOP + ph))
        o.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (px(x), TOP + ph + 18, x))
    o.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>' % (LEFT, TOP + ph, LEFT + pw, TOP + ph))
    o.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>' % (LEFT, TOP, LEFT, TOP + ph))
    o.append('<text x="%.1f" y="%d" text-anchor="middle">connections (log scale)</text>'
             % (LEFT + pw / 2, H - 15))
    o.append('<text transform="translate(20,%.1f) rotate(-90)" text-anchor="middle">writes/s</text>'
             % (TOP + ph / 2))
    # Lines, points, legend.
    for i, (name, pts) in enumerate(sorted(series.items(), key=lambda kv: kv[0] != "nimbus")):
        color = COLORS.get(name, OTHER[i % len(OTHER)])
        path = " ".join("%.1f,%.1f" % (px(x), py(y)) for x, y in pts)
        o.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="2.5"/>' % (path, color))
        for x, y in pts:
            o.append('<circle cx="%.1f" cy="%.1f" r="4" fill="%s"><title>%s, %d connections: %s writes/s'
                     '</title></circle>' % (px(x), py(y), color, escape(name), x, "{:,.0f}".format(y)))
        ly = TOP + 20 + 22 * i
        o.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2.5"/>'
                 % (LEFT + pw + 20, ly, LEFT + pw + 45, ly, color))
        o.append('<text x="%d" y="%d">%s</text>' % (LEFT + pw + 52, ly + 4, escape(name)))
    o.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(o) + "\n")


if __name__ == "__main__":
    main(sys.argv)
