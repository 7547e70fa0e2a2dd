"""Attacks: FGSM and PGD (lineage semantics); AutoAttack's components (apgd, fab, square)."""
from aaer.attacks.pgd import fgsm, pgd, pgd_restart

__all__ = ["fgsm", "pgd", "pgd_restart"]
