"""The chain server's HTTP layer: routes → dataplane → engine (see STYLE.md)."""
