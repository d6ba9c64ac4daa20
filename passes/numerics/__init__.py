"""Numerics of shipped programs: MX rounding, the numerics twin rewrites, the evaluation text and the teacher-forced gate."""
