"""Rebuild the embedded sample (cxr_ray/sample/chest_xray) from the full dataset.

Whole patients are taken, in a seeded order, until each split/class has its
quota, so the sample keeps the dataset's patient structure. Run once by a
maintainer; the result is committed so a fresh machine needs no download.

    python tools/make_sample.py ../shared/data/chest_xray cxr_ray/sample/chest_xray
"""

from __future__ import annotations

import random
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from cxr_ray.data.layout import patient_id

QUOTA = {("train", "NORMAL"): 120, ("train", "PNEUMONIA"): 120, ("test", "NORMAL"): 30, ("test", "PNEUMONIA"): 30}


def main(src: str, dest: str, seed: int = 7) -> None:
    src_root, dest_root = Path(src), Path(dest)
    if dest_root.exists():
        shutil.rmtree(dest_root)
    for (split, cls), quota in sorted(QUOTA.items()):
        by_patient: dict[str, list[Path]] = defaultdict(list)
        for f in sorted((src_root / split / cls).iterdir()):
            by_patient[patient_id(f.name, split)[0]].append(f)
        patients = sorted(by_patient)
        random.Random(f"{seed}-{split}-{cls}").shuffle(patients)
        taken = 0
        out = dest_root / split / cls
        out.mkdir(parents=True)
        for pid in patients:
            if taken >= quota:
                break
            for f in by_patient[pid]:
                shutil.copy2(f, out / f.name)
                taken += 1
        print(f"{split}/{cls}: {taken} images")


if __name__ == "__main__":
    main(*sys.argv[1:3])
