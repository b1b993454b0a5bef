#!/usr/bin/env python3
"""Writes the console's coastline (crates/desa-server/console/land.json)
from Natural Earth's 1:110m land polygons (public domain) as packaged in the
npm registry's world-atlas@2 (land-110m.json, TopoJSON):

    npm pack world-atlas@2 && tar xzf world-atlas-2.0.2.tgz
    scripts/console/land.py package/land-110m.json > crates/desa-server/console/land.json

The output is a JSON list of rings, each a flat list lon, lat, lon, lat, ...
in degrees to two decimals: the console draws them on a canvas.
"""
import json
import sys

topo = json.load(open(sys.argv[1]))
scale, shift = topo["transform"]["scale"], topo["transform"]["translate"]
arcs = []
for arc in topo["arcs"]:
    x = y = 0
    points = []
    for dx, dy in arc:
        x, y = x + dx, y + dy
        points.append((x * scale[0] + shift[0], y * scale[1] + shift[1]))
    arcs.append(points)


def ring(indexes):
    out = []
    for i in indexes:
        points = arcs[i] if i >= 0 else arcs[~i][::-1]
        out.extend(points if not out else points[1:])
    return out


rings = []
for geometry in topo["objects"]["land"]["geometries"]:
    polygons = geometry["arcs"] if geometry["type"] == "MultiPolygon" else [geometry["arcs"]]
    for polygon in polygons:
        for r in polygon:
            rings.append([round(c, 2) for p in ring(r) for c in p])
json.dump(rings, sys.stdout, separators=(",", ":"))
