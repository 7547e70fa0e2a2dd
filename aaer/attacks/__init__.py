"""Attacks: FGSM and PGD (lineage semantics); AutoAttack's components (apgd, fab, square);
the FastAT Benchmark's CR attack (cr)."""
from aaer.attacks.pgd import fgsm, pgd, pgd_restart

__all__ = ["fgsm", "pgd", "pgd_restart"]
