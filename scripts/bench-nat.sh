#!/usr/bin/env bash
# Benchmark: applying the masquerade NAT ruleset (dual-stack, Istio, ports and a port range)
# as our ONE nftables transaction, against one `nft` process per table/chain/rule (what
# KubeVirt's virt-launcher does), side by side in a throwaway network namespace.
#
# Both sides apply exactly the same rules: ours is tests/golden/nat/dual-istio-ports.json (the
# generator's output, kept identical by the golden test); the per-rule side runs one
# `nft add table|chain|rule ...` per line of nft's own listing of that ruleset
# (tests/golden/nat/dual-istio-ports.nft). Every run starts from an empty ruleset. Both loops
# run inside the namespace (one `ip netns exec` for the whole run, not per command).
#
# Usage (root): scripts/bench-nat.sh [runs]   (default 10; prints medians and the ratio)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-10}
[ "$(id -u)" = 0 ] || { echo "bench-nat.sh needs root (network namespaces, nftables)" >&2; exit 3; }
command -v nft >/dev/null || { echo "bench-nat.sh needs nft (apt-get install nftables)" >&2; exit 3; }

JSON=tests/golden/nat/dual-istio-ports.json
LISTING=tests/golden/nat/dual-istio-ports.nft
[ -f "$JSON" ] && [ -f "$LISTING" ] || { echo "missing $JSON or $LISTING" >&2; exit 3; }

NS="bench-nat-$$-$RANDOM"
WORK=$(mktemp -d)
cleanup() { ip netns del "$NS" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ip netns add "$NS"

# One nft command line per table, chain and rule (KubeVirt's style: the table, its chains,
# then the rules, since a rule may jump to a chain listed after it).
awk '
  function flush_chain() { if (pending) { objs[++n]="add chain " fam " " tbl " " ch; pending=0 } }
  function flush_table(  i) { for (i = 1; i <= n; i++) print objs[i]; for (i = 1; i <= m; i++) print rules[i]; n=0; m=0 }
  /^table / { flush_table(); fam=$2; tbl=$3; objs[++n]="add table " fam " " tbl; next }
  /^\tchain / { ch=$2; pending=1; next }
  /^\t\ttype / {
      line=$0; sub(/^\t\t/, "", line); sub(/ policy accept;$/, "", line)
      objs[++n]="add chain " fam " " tbl " " ch " { " line " }"; pending=0; next }
  /^\t\t/ {
      flush_chain()
      line=$0; sub(/^\t\t/, "", line); gsub(/counter packets 0 bytes 0/, "counter", line)
      rules[++m]="add rule " fam " " tbl " " ch " " line; next }
  /^\t}/ { flush_chain() }
  END { flush_table() }
' "$LISTING" > "$WORK/per-rule.txt"
NCMDS=$(wc -l < "$WORK/per-rule.txt")

# The per-rule commands must build exactly the same ruleset as the transaction.
ip netns exec "$NS" bash -c 'while IFS= read -r c; do nft "$c"; done < "$1"' _ "$WORK/per-rule.txt"
ip netns exec "$NS" nft list ruleset > "$WORK/per-rule.listing"
ip netns exec "$NS" nft flush ruleset
ip netns exec "$NS" nft -j -f "$JSON"
ip netns exec "$NS" nft list ruleset > "$WORK/tx.listing"
ip netns exec "$NS" nft flush ruleset
if ! diff -u "$WORK/tx.listing" "$WORK/per-rule.listing" >&2; then
  echo "the per-rule commands do not reproduce the transaction's ruleset" >&2; exit 1
fi

# Timed runs, alternating, all inside the namespace. Each per-rule command is its own `nft`
# process with the command on its command line (nft joins its arguments), as KubeVirt runs them.
ip netns exec "$NS" bash -s "$RUNS" "$JSON" "$WORK/per-rule.txt" > "$WORK/times" <<'EOF'
runs=$1 json=$2 cmds=$3
mapfile -t C < "$cmds"
now() { date +%s%N; }
for ((i = 0; i < runs; i++)); do
  nft flush ruleset
  t0=$(now); nft -j -f "$json"; t1=$(now)
  echo "tx $(( (t1 - t0) / 1000 ))"
  nft flush ruleset
  t0=$(now)
  for c in "${C[@]}"; do nft "$c"; done
  t1=$(now)
  echo "per-rule $(( (t1 - t0) / 1000 ))"
done
nft flush ruleset
EOF

median() { sort -n | awk '{a[NR]=$1} END { if (NR % 2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2) }'; }
TX=$(awk '$1=="tx"{print $2}' "$WORK/times" | median)
PR=$(awk '$1=="per-rule"{print $2}' "$WORK/times" | median)
RATIO=$(awk -v a="$PR" -v b="$TX" 'BEGIN { printf "%.1f", a / b }')
printf 'masquerade NAT, dual-stack + Istio + ports (%d nft commands when split), median of %d runs:\n' "$NCMDS" "$RUNS"
printf '  one transaction (nft -j -f):      %8.2f ms\n' "$(awk -v x="$TX" 'BEGIN{print x/1000}')"
printf '  one nft process per rule:         %8.2f ms\n' "$(awk -v x="$PR" 'BEGIN{print x/1000}')"
printf '  ratio (per-rule / transaction):   %8sx\n' "$RATIO"
