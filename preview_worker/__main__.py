"""Run the command line as `python -m preview_worker`."""

from preview_worker.cli import main

main()
