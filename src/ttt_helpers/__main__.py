"""``python -m ttt_helpers``: the command line of :mod:`ttt_helpers.tabpfn.cli`."""

from ttt_helpers.tabpfn.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
