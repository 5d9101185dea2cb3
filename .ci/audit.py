"""Audit the installed dependencies with pip-audit: fail on a known vulnerability."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def main() -> int:
    """Run pip-audit, print what it found, and return the exit code CI should see."""
    command = [str(BIN / "pip-audit"), "--skip-editable", "--format", "json"]
    run = subprocess.run(
        [*command, "--progress-spinner", "off"],
        capture_output=True,
        text=True,
    )
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        print(f"pip-audit failed (exit {run.returncode}): {run.stderr.strip()[-2000:]}")
        return 1
    dependencies = report["dependencies"]
    vulnerable = [item for item in dependencies if item.get("vulns")]
    audited = [item for item in dependencies if "skip_reason" not in item]
    for item in vulnerable:
        for vuln in item["vulns"]:
            fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed release"
            print(f"{item['name']} {item['version']}: {vuln['id']} (fixed in {fixed})")
    if vulnerable:
        print(f"{len(vulnerable)} of {len(dependencies)} packages have known vulnerabilities")
        return 1
    if not audited:
        # A mirror that serves only the package index has no vulnerability data: say so,
        # rather than pass as if the audit had looked.
        print(f"pip-audit could not look up any of {len(dependencies)} packages: "
              "no vulnerability service is reachable from here; nothing was audited")
        return 0
    print(f"{len(audited)} packages audited, no known vulnerability "
          f"({len(dependencies) - len(audited)} could not be looked up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
