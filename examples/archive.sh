#!/usr/bin/env bash
# Years later: is this archived bundle still intact, what differs from the environment it was
# made in, and what would rebuild that environment?
#
#   examples/archive.sh model.kbundle [sha256:PINNED-DIGEST]
#
# Exit codes are kbundle's: 1 the bundle is damaged, 3 this environment cannot load it
# (the script goes on to print what would rebuild it), 0 all is well.
set -uo pipefail

bundle=${1:?usage: examples/archive.sh BUNDLE [sha256:DIGEST]}
expect=${2:-}
kbundle() { python -m kbundle "$@"; }

if [ -n "$expect" ]; then
    kbundle verify "$bundle" --expect "$expect" || exit $?
else
    kbundle verify "$bundle" || exit $?
fi

kbundle check "$bundle"
verdict=$?
if [ "$verdict" -ne 0 ]; then
    echo
    echo "This environment differs too much. The recorded requirements:"
    kbundle env export "$bundle"
    echo
    echo "Rebuild them with:  python -m kbundle env create $bundle .venv-$(basename "$bundle" .kbundle)"
fi
exit "$verdict"
