"""benchmarks/student.py: the README's student tables are what it makes of its result files."""

from __future__ import annotations

import shutil

from mindvideo.benchmarks import student


def test_readme_student_tables_are_generated_from_the_results(tmp_path):
    copy = tmp_path / "README.md"
    shutil.copy(student.README, copy)
    student.rewrite_readme(student.RESULTS, copy)
    assert copy.read_text(encoding="utf-8") == student.README.read_text(encoding="utf-8"), (
        "run: python -m mindvideo.benchmarks.student --readme"
    )
    for start, end in student.MARKERS.values():
        text = copy.read_text(encoding="utf-8")
        assert text.index(start) < text.index(end) and text[text.index(start) : text.index(end)].count("\n| ") >= 4


def test_accuracy_table_rows_carry_the_binomial_std_and_evaluations():
    nway = {"2": {"mean": 0.8, "binomial_std": 0.063, "trial_std": 0.02}, "10": {"mean": 0.4, "binomial_std": 0.077}}
    row = {"model": "student", "steps": 4, "scheduler": "lcm", "decoder": "tiny", "unet_evals_per_clip": 4}
    row.update({"video_nway": nway, "ssim_colour": 0.25, "seconds_per_clip": 0.05})
    ridge = {"video_nway": nway, "ssim_colour": 0.35, "seconds_per_clip": 0.01}
    lines = student.accuracy_table({"rows": [row], "ridge": ridge})
    assert lines[2] == "| student | 4 LCM | tiny | 4 | 0.800 ± 0.063 | 0.400 ± 0.077 | 0.250 | 0.050 |"
    assert lines[3].startswith("| ridge | – | – | 0 | 0.800 ± 0.063 |")
