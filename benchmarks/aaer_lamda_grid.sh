#!/usr/bin/env bash
# The lamda3 sensitivity grid of the CO fixture (README, "Why N-AAER fails the fixture"):
# RS-AAER and N-AAER with lamda3 in {0.75, 1.5, 3.0} (each method's published eps-32 value
# is one of them and comes from the warn suite), seeds 0-4 only, two runs at a time.
#   bash benchmarks/aaer_lamda_grid.sh [OUT=runs/co-grid] [SEEDS=5]
#   python benchmarks/aaer_fixture_analysis.py runs/co-warn --grid runs/co-grid
set -euo pipefail
out=${1:-runs/co-grid}
seeds=${2:-5}
aaer=${AAER:-aaer}
jobs=${JOBS:-2}
mkdir -p "$out"
cmds=$("$aaer" reproduce co-fixture --seeds "$seeds" --out "$out" --dry-run |
       grep -E -- "--method (rs|n)-aaer ")
{
  for l3 in 0.75 1.5 3.0; do
    while read -r line; do
      method=$(sed -E 's/.*--method ([a-z-]+) .*/\1/' <<<"$line")
      seed=$(sed -E 's/.*--seed ([0-9]+) .*/\1/' <<<"$line")
      published=$([ "$method" = rs-aaer ] && echo 1.5 || echo 0.75)
      [ "$l3" = "$published" ] && continue          # in the warn suite already
      name=$(tr a-z A-Z <<<"$method")_l3-${l3}_s${seed}
      sed -E "s#--out-dir [^ ]+#--out-dir $out/$name#; s#^aaer #$aaer #" <<<"$line" |
        sed -E "s#\$# --lamda3 $l3#"
    done <<<"$cmds"
  done
} > "$out/commands.txt"
echo "$(wc -l < "$out/commands.txt") runs, $jobs at a time -> $out"
export OMP_NUM_THREADS=$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 ))
xargs -P "$jobs" -I{} bash -c '{} > /dev/null 2>&1 && echo "done  {}" | sed -E "s/.*--out-dir ([^ ]+).*/done  \1/" || echo "FAILED {}"' < "$out/commands.txt"
