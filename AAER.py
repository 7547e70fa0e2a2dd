"""Runs the seed README's commands verbatim, e.g.

    python3 AAER.py --epoch 30 --clamp 1 --alpha 1.25 --epsilon 8 --lamda1 1.0 \
        --lamda2 2.5 --lamda3 1.5 --out-dir CIFAR10_RS-AAER_8

It is `aaer train` with the seed script's defaults; without --dataset the data set is
inferred from the out-dir's name (CIFAR100_... -> cifar100) and the log says so. After
training it evaluates clean / FGSM / PGD-50-10 as the reference does.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from aaer.cli import main, run  # noqa: E402

if __name__ == "__main__":
    run(main, prog="AAER.py", seed_script=True)
