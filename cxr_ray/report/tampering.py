"""Report section of issue 16: local tampering, from what the tamper stage recorded and wrote."""

from __future__ import annotations

from typing import Any

from cxr_ray import storage
from cxr_ray.report import plots
from cxr_ray.report.doc import Doc
from cxr_ray.storage import S3Settings


def _pct(value: float, low: float, high: float) -> str:
    return f"{value:.1%} [{low:.1%}, {high:.1%}]"


def tamper_section(doc: Doc, entry: dict[str, Any], attack_dir: str, s3: S3Settings | None) -> None:
    """The edits, how often they flip the pneumonia classifiers, the localiser's scores, and examples side by side.

    `entry`: the tamper stage's manifest entry (status and outputs); `attack_dir`: the attack stage's folder.
    """
    doc.heading("Local tampering: findings injected into and removed from real X-rays")
    tamper = entry.get("outputs") or {}
    if entry.get("status") != "done":
        doc.para(f"The tamper stage has not finished ({entry.get('status', 'not run')}).")
        return
    if not tamper:
        doc.para("No local tampering in this study (--tamper-epochs 0).")
        return
    model, edits = tamper["model"], tamper["edits"]
    area = edits.get("mask_area") or {}
    doc.para(
        f"Tamper model `{model['run_dir']}` ({model['epochs']} epochs on the train split; val L1 of same-class fills "
        f"{model['val_l1']:.3f}) edited {edits['rows']} real images ({edits['storage_format']} format): NORMAL images "
        "get a pneumonia-like opacity (inject), PNEUMONIA images normal lung over part of one (remove), inside lung "
        f"fields found from the pixels alone ({', '.join(f'{m} {n}' for m, n in sorted(edits['lung_methods'].items()))}); "
        f"median mask {area.get('p50', float('nan')):.1%} of the image. Edits: `{tamper['table']}`."
    )
    _attack_report(doc, attack_dir, s3)
    _localiser_table(doc, tamper["localiser"])
    if tamper.get("examples") and storage.exists(tamper["examples"], s3):
        from cxr_ray.tamper.examples import read_examples

        doc.image("tamper_examples.png", plots.tamper_examples(read_examples(tamper["examples"], s3)),
                  "Held-out test edits (the first by path of each direction): original, edited, true mask, and the "
                  "localiser's map with its region outlined; the title says whether its image score flags the edit.")  # fmt: skip


def _attack_report(doc: Doc, attack_dir: str, s3: S3Settings | None) -> None:
    """The attack's own report (DEST/attack.md), its title one level down."""
    from cxr_ray.tamper.attack import ATTACK_NAME

    uri = storage.join(storage.published(attack_dir, s3), f"{ATTACK_NAME}.md")
    if not storage.exists(uri, s3):
        doc.heading("Attack success", 3)
        doc.para("No attack result found.")
        return
    doc.markdown("\n".join(("##" + line if line.startswith("# ") else line) for line in storage.read_bytes(uri, s3).decode().splitlines()))


def _localiser_table(doc: Doc, localiser: dict[str, Any]) -> None:
    t = localiser["test"]
    doc.heading("The localiser: is an image edited, and where", 3)
    doc.para(f"`{localiser['run_dir']}`, trained on train-split edits and reals; thresholds from val (image: at most "
             f"{t['max_fpr']:.0%} of val reals flagged; map: best val IoU, {t['map_threshold']}); scored once on "
             f"{t['n_edited']} test edits and {t['n_real']} test reals.")  # fmt: skip
    doc.table(
        ["image AUC", "edits caught", "test reals flagged", "pixel AUC", "IoU with the true mask"],
        [[f"{t['image_auc']:.3f} [{t['image_auc_ci'][0]:.3f}, {t['image_auc_ci'][1]:.3f}]",
          _pct(t["tpr_at_1pct"], *t["tpr_at_1pct_ci"]), _pct(t["test_fpr"], *t["test_fpr_ci"]),
          f"{t['pixel_auc']:.3f}", f"{t['iou']:.3f} [{t['iou_ci'][0]:.3f}, {t['iou_ci'][1]:.3f}]"]],
    )  # fmt: skip
    benign = t.get("benign_fpr") or {}
    if benign:
        doc.para("False alarms at the same threshold on the benignly re-processed real test images: "
                 + "; ".join(f"{c} {_pct(*v)}" for c, v in sorted(benign.items())) + ".")  # fmt: skip
