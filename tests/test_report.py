"""The ``--report`` page: one self-contained, escaped HTML file and report.json with the same numbers."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest
import torch
from torch import nn

import netshrink
from netshrink.errors import InvalidInputError, OutputExistsError
from netshrink.graph.cuts import Skipped
from netshrink.report import error_scale, number, percent, write_report

FIDELITY = {"relative_error": 0.01234567, "cosine": 0.9987654, "top1_agreement": 0.9731, "samples": 12345}
ACCURACY = {"before": 0.8969, "after": 0.8921, "samples": 10000}
COMMAND = 'netshrink compress mlp7 --keep 0.5 --report "out/<a&b>" --layer "enc<1>&co"'
SVG_NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def compression():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))
    return netshrink.compress(model, [torch.randn(256, 20)], "group_lasso", keep=0.5)


@pytest.fixture
def awkward(compression):
    """The same compression with names and reasons that need escaping."""
    names = ["enc<1>&co", 'blocks.0."mlp"<fc>']
    layers = [replace(layer, name=name) for layer, name in zip(compression.layers, names, strict=True)]
    return replace(compression, layers=layers,
                   skipped=[Skipped("head<&>", "it produces the network's output & <more>")])


def write(folder, compression, **changes):
    arguments = {"fidelity": FIDELITY, "accuracy": ACCURACY, "command": COMMAND, "source": "tiny<mlp>"} | changes
    return write_report(folder, compression, **arguments)


def svgs(page: str) -> list[ET.Element]:
    return [ET.fromstring(block) for block in re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)]


def test_writes_one_self_contained_page(tmp_path, compression):
    path = write(tmp_path / "report", compression)
    assert path == tmp_path / "report" / "index.html"
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["index.html", "report.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary left behind
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()
    assert "<link" not in page.lower() and "@import" not in page and "url(" not in page
    for target in re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page, flags=re.IGNORECASE):
        assert target.startswith(("#", "data:")), target
    # The only address on the page is the SVG namespace, which is a name, not a download.
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}


def test_page_shows_layers_numbers_and_command(tmp_path, compression):
    page = write(tmp_path / "report", compression).read_text(encoding="utf-8")
    assert "<title>netshrink report: tiny&lt;mlp&gt;</title>" in page
    for layer in compression.layers:
        assert f">{layer.name}<" in page
        assert f"{layer.kept:,} / {layer.total:,}" in page
        assert layer.kind in page
    assert f"{compression.params_before:,} → {compression.params_after:,}" in page
    assert percent(compression.ratio) in page
    assert "group_lasso" in page and "keep=0.5" in page and "chaining=top_down" in page
    for text in ("0.01235", "0.9988", "97.31%", "12,345", "89.69%", "89.21%", "−0.48 pp", "10,000"):
        assert text in page, text
    for skipped in compression.skipped:
        assert skipped.module in page and html_escaped(skipped.reason) in page
    assert ('<pre><code>netshrink compress mlp7 --keep 0.5 --report &quot;out/&lt;a&amp;b&gt;&quot; '
            "--layer &quot;enc&lt;1&gt;&amp;co&quot;</code></pre>") in page


def html_escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#x27;")


def test_everything_from_outside_is_escaped(tmp_path, awkward):
    extra = {"size <before>": "1 & 2", "onnx max relative difference": 3.2e-7}
    page = write(tmp_path / "report", awkward, extra=extra, command="run <script>alert(1)</script> & done").read_text()
    assert "<script" not in page and "<fc>" not in page and "<1>" not in page and "<more>" not in page
    assert "enc&lt;1&gt;&amp;co" in page and "blocks.0.&quot;mlp&quot;&lt;fc&gt;" in page
    assert "head&lt;&amp;&gt;" in page and "output &amp; &lt;more&gt;" in page
    assert "run &lt;script&gt;alert(1)&lt;/script&gt; &amp; done" in page
    assert "size &lt;before&gt;" in page and "1 &amp; 2" in page and "3.2×10⁻⁷" in page
    names = set()
    for svg in svgs(page):
        names |= {element.text for element in svg.iter(f"{SVG_NS}text")}
    assert {"enc<1>&co", 'blocks.0."mlp"<fc>'} <= names


def test_svg_charts_are_well_formed(tmp_path, compression, awkward):
    for name, result in (("plain", compression), ("awkward", awkward)):
        page = write(tmp_path / name, result).read_text(encoding="utf-8")
        charts = svgs(page)
        assert len(charts) == 2  # widths, errors
        widths, errors = charts
        assert widths.tag == f"{SVG_NS}svg" and widths.get("viewBox")
        bars = [rect for rect in widths.iter(f"{SVG_NS}rect") if rect.get("fill") != "#f5f6f8"]
        assert len(bars) == 2 * len(result.layers)  # a total and a kept bar per cut
        tooltips = [title.text for title in widths.iter(f"{SVG_NS}title")]
        assert all(any(layer.name in text for text in tooltips) for layer in result.layers)
        error_labels = [t.text for t in errors.iter(f"{SVG_NS}text")]
        assert all(number(layer.error) in error_labels for layer in result.layers)
        assert "reconstruction error, linear scale" in error_labels


def test_report_json_has_the_compression_numbers(tmp_path, compression):
    write(tmp_path / "report", compression, extra={"file size (bytes)": 5140})
    data = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    assert data["format"] == "netshrink-report/1"
    assert data["source"] == "tiny<mlp>" and data["command"] == COMMAND
    assert data["method"] == compression.method and data["options"] == compression.options
    assert data["params_before"] == compression.params_before and data["params_after"] == compression.params_after
    assert data["ratio"] == compression.ratio
    assert data["fidelity"] == FIDELITY and data["accuracy"] == ACCURACY
    assert data["extra"] == {"file size (bytes)": 5140}
    assert [(l["name"], l["kind"], l["kept"], l["total"], l["error"], l["sampled"]) for l in data["layers"]] == [
        (l.name, l.kind, l.kept, l.total, l.error, l.sampled) for l in compression.layers
    ]
    assert data["skipped"] == [{"module": s.module, "reason": s.reason} for s in compression.skipped]


def test_existing_folder_is_refused_and_left_alone(tmp_path, compression):
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write(folder, compression)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]
    write(folder, compression, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["index.html", "report.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_without_accuracy_and_with_bad_fidelity(tmp_path, compression):
    page = write(tmp_path / "report", compression, accuracy=None).read_text(encoding="utf-8")
    assert "<th>Accuracy</th>" not in page and "97.31%" in page
    with pytest.raises(InvalidInputError, match="cosine"):
        write(tmp_path / "bad", compression, fidelity={"relative_error": 0.1, "top1_agreement": 1.0, "samples": 3})
    with pytest.raises(InvalidInputError, match="before"):
        write(tmp_path / "bad", compression, accuracy={"before": "high", "after": 0.5, "samples": 3})
    assert not (tmp_path / "bad").exists()


def test_errors_over_more_than_two_decades_are_drawn_on_a_log_axis(tmp_path, compression):
    spread = [replace(layer, error=error) for layer, error in zip(compression.layers, (2e-5, 0.3), strict=True)]
    page = write(tmp_path / "log", replace(compression, layers=spread)).read_text(encoding="utf-8")
    labels = [t.text for t in svgs(page)[1].iter(f"{SVG_NS}text")]
    assert "reconstruction error, log scale (each gridline ×10)" in labels
    assert {"10⁻⁵", "10⁻¹", "10⁰"} <= set(labels) and "2×10⁻⁵" in labels
    assert "axis is logarithmic" in page
    assert error_scale([0.01, 0.5])[0] is False
    assert error_scale([0.001, 0.5]) == (True, 0.001, 1.0, [0.001, 0.01, 0.1, 1.0])
    log, low, high, ticks = error_scale([0.0, 0.2, 0.7])
    assert not log and low == 0 and high >= 0.7 and ticks[0] == 0 and ticks[-1] == high


def test_number_formatting():
    assert number(5742602) == "5,742,602"
    assert number(0.6483127) == "0.6483"
    assert number(1.5309) == "1.531"
    assert number(12345.6) == "12,350"
    assert number(1.234e-5) == "1.234×10⁻⁵"
    assert number(-0.25) == "−0.25"
    assert number(float("nan")) == "n/a" and number(0.0) == "0"
    assert number(0.99996, unlike=1.0) == "0.99996"  # a cosine just below 1 is not shown as 1
    assert percent(0.8969) == "89.69%" and percent(1.0) == "100%" and percent(0.99999) == "99.999%"
