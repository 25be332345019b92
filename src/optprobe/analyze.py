"""``python -m optprobe.analyze``: the same as ``optprobe-analyze`` (``optprobe.cli.analyze``)."""

from optprobe.cli.analyze import main

if __name__ == "__main__":
    raise SystemExit(main())
