"""Stage `synthesize`: the embedded default's raw annotation set in data/raw.

Only the tiny profile synthesizes, with candidates from the base generator (stage
`base_model`); the real profile reads the user's export from `profile.dataset`, so this stage
then leaves an empty set with a note.
"""

from pathlib import Path

from onereward.config import active_profile, section
from onereward.data.records import RECORDS_FILE
from onereward.data.synthetic import SynthesizeConfig, synthesize
from onereward.io import atomic_path
from onereward.policy.known import GenerationConfig

OUT = Path("data/raw")


def main() -> None:
    profile = active_profile()
    cfg = section(SynthesizeConfig, "synthesize")
    with atomic_path(OUT) as tmp:
        if profile.is_tiny:
            generation = section(GenerationConfig, "generation")
            n = synthesize(tmp, cfg, profile.policy_model, generation.paste_known)
            print(f"synthesize: {n} records in {OUT}")
        else:
            tmp.mkdir()
            (tmp / RECORDS_FILE).write_text("")
            (tmp / "README.md").write_text(f"Profile {profile.name!r} reads its annotations from {profile.dataset}.\n")
            print(f"synthesize: skipped, profile {profile.name!r} uses {profile.dataset}")


if __name__ == "__main__":
    main()
