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


def test_rows_average_over_seeds_and_gaps_pair_the_seeds():
    def one(p2, p10):
        return {
            "video_nway": {"2": {"mean": p2, "trial_std": 0.01}, "10": {"mean": p10, "trial_std": 0.0}},
            "ssim_colour": 0.3,
        }

    row = student.over_seeds([one(0.80, 0.40), one(0.90, 0.50)], clips=40)
    two = row["video_nway"]["2"]
    assert abs(two["mean"] - 0.85) < 1e-12 and two["per_seed"] == [0.80, 0.90]
    assert abs(two["seed_std"] - 0.0707107) < 1e-6 and abs(two["binomial_std"] - (0.85 * 0.15 / 40) ** 0.5) < 1e-12
    teacher = {"model": "teacher", "decoder": "vae", **student.over_seeds([one(0.85, 0.5), one(0.96, 0.5)], 40)}
    tiny = {"model": "student", "steps": 4, "decoder": "tiny", **row}
    with_tiny_teacher = {**teacher, "decoder": "tiny"}
    gaps = student.gaps([teacher, with_tiny_teacher, tiny])
    assert [(g["decoder"], g["teacher_decoder"]) for g in gaps] == [("tiny", "tiny"), ("tiny", "vae")]
    # paired differences 0.05 and 0.06: mean 0.055, standard error 0.005
    assert abs(gaps[1]["2"]["mean"] - 0.055) < 1e-12 and abs(gaps[1]["2"]["se"] - 0.005) < 1e-12
