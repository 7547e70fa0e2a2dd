"""`python -m aaer ...` (also what `torchrun -m aaer` runs)."""
from aaer.cli import run

run()
