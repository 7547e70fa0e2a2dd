"""Reports over run directories: report.md and plots (report.py), TensorBoard event files
(tensorboard.py)."""
