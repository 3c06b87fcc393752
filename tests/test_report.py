"""The report's Markdown-to-HTML: stage texts (tables, bullets) must render as tables and lists, not raw pipes."""

from __future__ import annotations

from cxr_ray.report.build import markdown_to_html, run_label


def test_tables_bullets_and_inline_markup_render_as_html():
    text = (
        "Intro with `code` and **bold**.\n\n"
        "## Accuracy\n\n"
        "| model | trained on | accuracy [95% CI] |\n|---|---|---:|\n| cnn | real | 0.462 [0.323, 0.554] |\n\n"
        "- **cnn** calls 0.0% of fakes pneumonia\n- second <item>\n"
    )
    out = markdown_to_html(text)
    assert "|" not in out and "---" not in out
    assert "<p>Intro with <code>code</code> and <strong>bold</strong>.</p>" in out
    assert "<h3>Accuracy</h3>" in out
    assert "<th>accuracy [95% CI]</th>" in out and "<td>cnn</td>" in out
    assert "<td class='num'>0.462 [0.323, 0.554]</td>" in out  # numbers align right, words left
    assert out.count("<li>") == 2 and "second &lt;item&gt;" in out  # escaped, never raw HTML


def test_run_labels_keep_the_robust_variant_apart():
    assert run_label("deepfake-cnn-real") == "cnn"
    assert run_label("deepfake-cnn-robust-real") == "cnn-robust"
    assert run_label("pneumonia-mobilenet_v2-fake") == "mobilenet_v2"
    assert run_label("freq_baseline") == "freq_baseline"
    # A run retrained on new inputs (issue 13) keeps its label.
    assert run_label("deepfake-cnn-robust-real-inputs-0123abcd") == "cnn-robust"
    assert run_label("pneumonia-resnet18-fake-inputs-89ef4567") == "resnet18"


def test_a_report_over_an_empty_study_root_says_what_is_missing(tmp_path):
    from cxr_ray.report.build import build_report
    from cxr_ray.study import StudyLayout

    layout = StudyLayout(str(tmp_path / "study"))
    out = build_report(layout, log=lambda _: None)
    assert out == {"md": f"{layout.report}/report.md", "html": f"{layout.report}/report.html"}
    md = (tmp_path / "study" / "report" / "report.md").read_text()
    for missing in ("No ingest summary found.", "No image tables found.", "No GAN runs recorded.",
                    "No classifier runs recorded.", "No transfer matrix found.", "No detector runs recorded.",
                    "No cross-evaluation table found.", "No search recorded."):
        assert missing in md
    assert "<h1>cxr-ray study report</h1>" in (tmp_path / "study" / "report" / "report.html").read_text()
