"""The mathematics: per-sample input gradients, the GradNorm penalty, edge maps and gradient teachers,
attacks in pixel space, pixel <-> normalized spaces and warm-up schedules. No files, devices or parsing."""
