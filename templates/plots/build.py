"""Write ``page.html``: DVC's plots page with vega, vega-lite and vega-embed inline, so that
``dvc plots show`` draws its charts offline (DVC's own page loads them from a CDN).

Maintainers only, to move to other versions (the users' page is committed):

    npm pack vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0
    python templates/plots/build.py vega-5.33.1.tgz vega-lite-5.23.0.tgz vega-embed-6.29.0.tgz
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILDS = {"vega": "package/build/vega.min.js", "vega-lite": "package/build/vega-lite.min.js",
          "vega-embed": "package/build/vega-embed.min.js"}

PAGE = """<!DOCTYPE html>
<!-- `dvc plots show` page (.dvc/config plots.html_template), written by templates/plots/build.py.
     Inline: {versions}; BSD-3-Clause, University of Washington Interactive Data Lab
     (templates/plots/LICENSE). -->
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{libraries}
    <script>
      // Every chart as SVG (crisp, and its marks are in the page) and no links to online editors.
      window.vegaEmbed = (function (embed) {
        return function (el, spec, opt) {
          return embed(el, spec, Object.assign({renderer: "svg", actions: {export: true, source: true, compiled: false, editor: false}}, opt || {}));
        };
      })(window.vegaEmbed);
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def main(tarballs: list[str]) -> None:
    scripts, versions = [], []
    for name, member in BUILDS.items():
        path = next(t for t in tarballs if Path(t).name.startswith(f"{name}-") and Path(t).name[len(name) + 1].isdigit())
        with tarfile.open(path) as tar:
            js = tar.extractfile(member).read().decode()
        assert "</script" not in js and "{plot_divs}" not in js, f"{name} cannot be inlined"
        scripts.append(f"    <script>/* {Path(path).name[:-4]} */\n{js}\n    </script>")
        versions.append(Path(path).name[:-4].replace(f"{name}-", f"{name} "))
    page = PAGE.replace("{versions}", ", ".join(versions)).replace("{libraries}", "\n".join(scripts))
    (HERE / "page.html").write_text(page)


if __name__ == "__main__":
    main(sys.argv[1:])
