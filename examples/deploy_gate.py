"""Deploy gate in Python: verify a bundle against the release key, then load the model.

    python examples/deploy_gate.py model.kbundle release.pub [sha256:DIGEST]
    python examples/deploy_gate.py s3://models/prod/model.kbundle release.pub sha256:DIGEST

Only a bundle that is intact and signed by ``release.pub`` gets through; naming the key
trusts exactly that key (the machine's trusted-keys directory is not consulted) and requires
its signature. Because the release key signed the bundle, its custom-object code may run
without ``trust_code=True``. The bundle may be a URL (docs/storage.md): it is verified as it
is streamed, and the load verifies what it loads again, so an object swapped between the two
is refused by the pinned digest. Exit codes are kbundle's own: each error carries its
``exit_code``.
"""

from __future__ import annotations

import sys

import kbundle


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: deploy_gate.py BUNDLE RELEASE_PUB [sha256:DIGEST]", file=sys.stderr)
        return 2
    bundle, release_key = argv[0], argv[1]
    expect = argv[2] if len(argv) == 3 else None
    try:
        report = kbundle.verify(bundle, expect=expect, trusted_keys=[release_key])
    except kbundle.KbundleError as exc:
        print(f"deploy gate: REFUSED {bundle}: {exc}", file=sys.stderr)
        for finding in exc.findings[1:]:
            print(f"  - {finding.describe()}", file=sys.stderr)
        return exc.exit_code
    assert report.signature is not None and report.signature.trusted
    print(f"deploy gate: {bundle} {report.head.digest}: {report.signature.describe()}")

    try:
        model = kbundle.load(bundle, expect=report.head.digest, trusted_keys=[release_key])
    except kbundle.KbundleError as exc:
        print(f"deploy gate: {bundle} verified but did not load: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"deploy gate: serving {model.name} ({model.count_params()} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
