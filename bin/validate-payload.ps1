# Validate preview job payloads: bin/validate-payload.ps1 [--json] FILE... | -
# Exit 0 when all are valid, 1 when any is invalid, 2 when any cannot be read.
$root = Split-Path -Parent $PSScriptRoot
$venv = Join-Path $root ".venv/Scripts/preview-worker.exe"
if (-not (Test-Path $venv)) { $venv = Join-Path $root ".venv/bin/preview-worker" }
$command = if (Test-Path $venv) { $venv } else { "preview-worker" }
& $command validate @args
exit $LASTEXITCODE
