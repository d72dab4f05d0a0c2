"""Stage `shard`: validate the raw records, quarantine bad ones, write WebDataset shards,
the Parquet pair manifest and reports/data_stats.json."""

import sys
from pathlib import Path

from onereward.config import active_profile, section
from onereward.data.records import RecordError
from onereward.data.sharding import ShardConfig, shard_dataset
from onereward.io import atomic_path, write_json

SHARDS = Path("data/shards")
MANIFEST = Path("data/manifest.parquet")
QUARANTINE = Path("data/quarantine.jsonl")
STATS = Path("reports/data_stats.json")


def main() -> None:
    profile = active_profile()
    cfg = section(ShardConfig, "shard")
    with atomic_path(SHARDS) as shards, atomic_path(MANIFEST) as manifest, atomic_path(QUARANTINE) as quarantine:
        try:
            stats = shard_dataset(Path(profile.dataset), shards, manifest, quarantine, cfg)
        except RecordError as e:  # strict mode
            sys.exit(f"shard (strict): {e}")
        except (FileNotFoundError, UnicodeError) as e:  # no records file, or one that is not UTF-8
            sys.exit(f"shard: {e}")
    write_json(STATS, stats)
    reasons = ", ".join(f"{k}: {v}" for k, v in stats["quarantined_by_reason"].items()) or "none"
    print(
        f"shard: {stats['records_in']} records, {stats['accepted']} accepted, "
        f"{stats['quarantined']} quarantined ({reasons}); pairs per split {stats['pairs_per_split']}"
    )


if __name__ == "__main__":
    main()
