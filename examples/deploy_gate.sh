#!/bin/sh
# Deploy gate: let a model bundle through only when it is intact, signed by the release key,
# and (when a digest is pinned) exactly the bundle that was released.
#
#   examples/deploy_gate.sh BUNDLE RELEASE_PUB [sha256:DIGEST]
#
# BUNDLE may be a URL (s3://models/prod/model.kbundle, https://...; docs/storage.md): it is
# verified straight from the store, streamed, with nothing stored locally.
#
# RELEASE_PUB is the public key made by 'kbundle keygen' on the release machine. Naming it
# with --key means: trust only this key, and refuse a bundle it did not sign. DIGEST is what
# 'kbundle pack' printed; pinning it also stops an older (validly signed) bundle from being
# rolled out in its place. Set KBUNDLE to the command to run (default: kbundle).
#
# Exits 0 when the bundle may be deployed; otherwise kbundle's own exit code.
set -u

KBUNDLE=${KBUNDLE:-kbundle}
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 BUNDLE RELEASE_PUB [sha256:DIGEST]" >&2
    exit 2
fi
bundle=$1
release_key=$2

# --expect only when a digest was given. --quiet: the gate prints its own verdict; kbundle
# still prints its one-line error on failure.
if [ $# -eq 3 ]; then
    $KBUNDLE verify "$bundle" --key "$release_key" --expect "$3" --quiet >/dev/null
else
    $KBUNDLE verify "$bundle" --key "$release_key" --quiet >/dev/null
fi
status=$?

case $status in
    0)
        echo "deploy gate: $bundle is intact and signed by the release key"
        ;;
    1)
        echo "deploy gate: REFUSED $bundle: corrupt, tampered with, not the pinned digest, or not signed by the release key" >&2
        ;;
    2)
        echo "deploy gate: could not check $bundle (bad path or key, not a bundle, or kbundle[signing] missing)" >&2
        ;;
    *)
        echo "deploy gate: kbundle failed unexpectedly (exit $status)" >&2
        ;;
esac
exit $status
