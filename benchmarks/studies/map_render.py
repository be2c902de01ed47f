"""Decision: the feature map draws every feature on one canvas with its data inline (`analysis/feature_map.py`), not one SVG node each.

How fast the feature map opens in a real browser with many features: explain's canvas map against
the obvious alternative (one SVG circle per feature, with its label as a tooltip), same points.

    python -m benchmarks.studies.map_render [--features 12288] [--repeats 3]

Opens each page from disk in headless Chromium (selenium) and reads, in the page, the time from
navigation start to the second animation frame after the load event (the first frame painted with
everything on it), then the time one redraw of the canvas takes after a search. Points are laid out
in clusters by a fixed seed (the page's cost does not depend on where the points lie); labels have
the length of real ones.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from tests.helpers import find_browser, headless_chrome  # noqa: E402

from sentence_sae.analysis.browser import feature_file, page  # noqa: E402
from sentence_sae.analysis.feature_map import map_page  # noqa: E402

PAINTED = ("<script>window.addEventListener('load', () => requestAnimationFrame(() => requestAnimationFrame(() => "
           "{ document.body.dataset.painted = performance.now().toFixed(1); })));</script></body>")


def synthetic_features(n: int, seed: int = 0) -> tuple[list[dict], np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.1, 0.9, size=(60, 2))
    coords = np.clip(centres[rng.integers(0, 60, n)] + rng.normal(0, 0.04, size=(n, 2)), 0, 1)
    words = ["package", "library", "game", "science", "python", "module", "font", "sound", "network", "kernel"]
    features = [{"id": i, "dead": False, "density": float(rng.lognormal(-6, 1.5)),
                 "label": ", ".join(f"{words[rng.integers(0, 10)]} {words[rng.integers(0, 10)]}" for _ in range(3))}
                for i in range(n)]
    roots = [int(r) if rng.random() < 0.3 else -1 for r in rng.integers(0, n, n)]
    return features, coords, roots


def svg_page(features: list[dict], coords: np.ndarray) -> str:
    width, height = 960, 700
    circles = "".join(
        f"<a href='features/{feature_file(f['id'])}'><circle cx='{10 + coords[f['id'], 0] * (width - 20):.1f}' "
        f"cy='{10 + coords[f['id'], 1] * (height - 20):.1f}' r='3' fill='#3b6ea5'><title>#{f['id']} {f['label']}"
        f"</title></circle></a>" for f in features)
    return page("svg map", f"<svg width='{width}' height='{height}'>{circles}</svg>")


def painted_ms(driver, path: Path) -> float:
    driver.get(path.as_uri())
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body && document.body.dataset.painted"))
    return float(driver.execute_script("return document.body.dataset.painted"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=12_288)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if find_browser() is None:
        sys.exit("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    features, coords, roots = synthetic_features(args.features)
    with tempfile.TemporaryDirectory() as tmp:
        canvas_path, svg_path = Path(tmp) / "map.html", Path(tmp) / "svg.html"
        canvas_path.write_text(map_page(features, coords, roots, "benchmark").replace("</body>", PAINTED))
        svg_path.write_text(svg_page(features, coords).replace("</body>", PAINTED))
        canvas, svg, redraw = [], [], []
        with headless_chrome(height=1400) as driver:
            for _ in range(args.repeats):
                canvas.append(painted_ms(driver, canvas_path))
                driver.execute_script("const s = document.getElementById('search'); s.value = 'game';"
                                      "s.dispatchEvent(new Event('input'));")
                redraw.append(float(driver.execute_script("return document.body.dataset.drawMs")))
                svg.append(painted_ms(driver, svg_path))
        size = canvas_path.stat().st_size / 1e6
    c, s = statistics.median(canvas), statistics.median(svg)
    print(f"{args.features} features, median of {args.repeats} page loads in headless Chromium")
    print("| page | first full paint (ms) | page size |\n|---|---|---|")
    print(f"| canvas map (explain's) | {c:.0f} | {size:.1f} MB |")
    print(f"| one SVG circle per feature (baseline) | {s:.0f} | - |")
    print(f"canvas / SVG time: {c / s:.2f}; a redraw after a search: {statistics.median(redraw):.0f} ms; "
          f"goal: under 3,000 ms -> {'met' if c < 3000 else 'NOT met'}")


if __name__ == "__main__":
    main()
