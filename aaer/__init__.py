"""aaer: fast single-step adversarial training without catastrophic overfitting.

AAER (Abnormal Adversarial Examples Regularization, NeurIPS 2023), the baselines it is
compared against, and an evaluation suite, behind one training loop and one CLI.
"""

__version__ = "0.1.0"
