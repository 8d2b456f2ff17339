"""Long Range Arena configs: one file per task, one variant per model (+ ``_smoke``)."""
