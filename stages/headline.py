"""Stage `headline`: reports/headline.json, a few named numbers per stage (`dvc metrics show`)."""

from pathlib import Path

from onereward.headline import headline, read_reports
from onereward.io import write_json

OUT = Path("reports/headline.json")


def main() -> None:
    numbers = headline(read_reports())
    write_json(OUT, numbers)
    print(f"headline: {len(numbers)} metrics in {OUT}")


if __name__ == "__main__":
    main()
