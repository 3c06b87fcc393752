"""The chest X-ray deepfake study, end to end, as one resumable job.

- profile.py: Profile, PROFILES, StudyOptions (what to run)
- args.py: the command line -> StudyOptions
- layout.py: StudyLayout (where everything lives under the study root)
- plan.py: each stage's configs and manifest hash
- stages.py: one function per stage
- concurrency.py: trainings side by side, and their timeline
- run.py: run_study and run_study_cli
- dry_run.py: the plan from the manifest (--dry-run), without Ray
"""

from cxr_ray.study.layout import StudyLayout
from cxr_ray.study.profile import PROFILES, Profile, StudyOptions
from cxr_ray.study.run import run_study, run_study_cli

__all__ = ["PROFILES", "Profile", "StudyLayout", "StudyOptions", "run_study", "run_study_cli"]
